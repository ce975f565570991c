//! A real HTTP server on a loopback address (port 0) that serves chosen statuses, redirects, delays
//! and failures, and records every request it receives with the server's own timestamps.
//!
//! Routes (the query string is ignored by the routing, so URLs can be made distinct with `?n=…`):
//! - `/status/{code}`: answers `code` (for 3xx with `Location: /status/200`).
//! - `/redirect/{n}`: 301 to `/redirect/{n-1}`; `/redirect/0` answers 200.
//! - `/loop/a` ↔ `/loop/b`: a redirect loop.
//! - `/to?u={url}`: 302 to `url` (percent-decoded).
//! - `/delay/{ms}`: answers 200 after `ms` milliseconds.
//! - `/hang`: never answers.
//! - `/flakyhang/{key}/{k}`: never answers the first `k` requests for `key`, then answers 200.
//! - `/flaky/{key}/{k}/{code}`: answers `code` to the first `k` requests for `key`, then 200.
//! - `/throttle/{key}/{secs}`: answers 429 with `Retry-After: secs` to the first request for `key`, then 200.
//! - `/head405`: HEAD answers 405, GET answers 200.
//! - `/polite/{ms}/…`: answers 429 when the previous request to this server started less than `ms`
//!   milliseconds earlier, 200 otherwise.
//! - a path given a document with [`Fixture::serve`]: that document (200).
//! - anything else: 200.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// When the server received it.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    counters: HashMap<String, u32>,
    last_start: Option<Instant>,
    throttled: u64,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: u32,
    most_in_flight: u32,
    /// Documents served at their paths.
    documents: HashMap<String, Bytes>,
    /// Connections accepted, and of those the ones still open.
    connections: u32,
    open_connections: u32,
}

/// Counts a request in flight until dropped (also when the client goes away mid-answer).
struct InFlight(Arc<Mutex<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

/// A running fixture server; stops when dropped.
pub struct Fixture {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Fixture {
    /// Starts a server on `ip` and a free port.
    pub async fn start(ip: IpAddr) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.expect("bind fixture server");
        let addr = listener.local_addr().expect("fixture address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                let st = st.clone();
                let token = token.clone();
                {
                    let mut state = st.lock().unwrap();
                    state.connections += 1;
                    state.open_connections += 1;
                }
                tokio::spawn(async move {
                    let counts = st.clone();
                    let service = service_fn(move |req| handle(st.clone(), req));
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let fut = conn.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = fut => {}
                        () = token.cancelled() => {}
                    }
                    counts.lock().unwrap().open_connections -= 1;
                });
            }
        });
        Self { addr, state, stop }
    }

    /// Starts a server on 127.0.0.1.
    pub async fn local() -> Self {
        Self::start(IpAddr::from([127, 0, 0, 1])).await
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far, and of those the ones still open (neither side closed them).
    pub fn connections(&self) -> (u32, u32) {
        let st = self.state.lock().unwrap();
        (st.connections, st.open_connections)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests received whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.state.lock().unwrap().seen.iter().filter(|s| s.path.starts_with(prefix)).count()
    }

    /// The most requests this server was ever answering at once.
    pub fn most_in_flight(&self) -> u32 {
        self.state.lock().unwrap().most_in_flight
    }

    /// Serves `body` at `path` (a sitemap, a gzipped file) from now on.
    pub fn serve(&self, path: &str, body: impl Into<Bytes>) {
        self.state.lock().unwrap().documents.insert(path.to_string(), body.into());
    }

    /// 429 answers given by `/polite/…`.
    pub fn throttled(&self) -> u64 {
        self.state.lock().unwrap().throttled
    }
}

fn respond(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"urlfleet fixture\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    r
}

fn redirect(status: StatusCode, to: &str) -> Response<Full<Bytes>> {
    let mut r = respond(status);
    r.headers_mut().insert(header::LOCATION, to.parse().unwrap_or_else(|_| "/".parse().unwrap()));
    r
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = Instant::now();
    let path = req.uri().path().to_string();
    let full = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| path.clone());
    let method = req.method().clone();
    let previous_start = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen { method: method.clone(), path: full.clone(), at: now });
        st.in_flight += 1;
        st.most_in_flight = st.most_in_flight.max(st.in_flight);
        st.last_start.replace(now)
    };
    let _in_flight = InFlight(state.clone());
    let document = state.lock().unwrap().documents.get(&path).cloned();
    if let Some(body) = document {
        return Ok(Response::new(Full::new(body)));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match parts.as_slice() {
        ["status", code] => {
            let code = code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::OK);
            if code.is_redirection() { redirect(code, "/status/200") } else { respond(code) }
        }
        ["redirect", n] => match n.parse::<u32>().unwrap_or(0) {
            0 => respond(StatusCode::OK),
            n => redirect(StatusCode::MOVED_PERMANENTLY, &format!("/redirect/{}", n - 1)),
        },
        ["loop", "a"] => redirect(StatusCode::FOUND, "/loop/b"),
        ["loop", "b"] => redirect(StatusCode::FOUND, "/loop/a"),
        ["to"] => {
            let target =
                req.uri().query().and_then(|q| q.strip_prefix("u=")).map(percent_decode).unwrap_or_else(|| "/".into());
            redirect(StatusCode::FOUND, &target)
        }
        ["delay", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            respond(StatusCode::OK)
        }
        ["hang"] => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        ["flakyhang", key, k] => {
            if bump(&state, key) <= k.parse().unwrap_or(0) {
                std::future::pending::<()>().await;
            }
            respond(StatusCode::OK)
        }
        ["flaky", key, k, code] => {
            let n = bump(&state, key);
            if n <= k.parse().unwrap_or(0) {
                respond(StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            } else {
                respond(StatusCode::OK)
            }
        }
        ["throttle", key, secs] => {
            if bump(&state, key) == 1 {
                let mut r = respond(StatusCode::TOO_MANY_REQUESTS);
                r.headers_mut().insert(header::RETRY_AFTER, secs.parse().unwrap());
                r
            } else {
                respond(StatusCode::OK)
            }
        }
        ["head405"] => {
            if method == Method::HEAD {
                respond(StatusCode::METHOD_NOT_ALLOWED)
            } else {
                respond(StatusCode::OK)
            }
        }
        ["polite", ms, ..] => {
            let min = Duration::from_millis(ms.parse().unwrap_or(100));
            if previous_start.is_some_and(|p| now.duration_since(p) < min) {
                state.lock().unwrap().throttled += 1;
                respond(StatusCode::TOO_MANY_REQUESTS)
            } else {
                respond(StatusCode::OK)
            }
        }
        _ => respond(StatusCode::OK),
    };
    Ok(resp)
}

fn bump(state: &Arc<Mutex<State>>, key: &str) -> u32 {
    let mut st = state.lock().unwrap();
    let c = st.counters.entry(key.to_string()).or_insert(0);
    *c += 1;
    *c
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP server that resets the first `k` connections (RST, no answer) and then answers every request
/// with 200; counts connections.
pub struct ResetThenServe {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU32>,
    stop: CancellationToken,
}

impl Drop for ResetThenServe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ResetThenServe {
    /// Starts the server on 127.0.0.1.
    pub async fn start(k: u32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let stop = CancellationToken::new();
        let (count, token) = (connections.clone(), stop.clone());
        let state = Arc::new(Mutex::new(State::default()));
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if n <= k {
                    // SO_LINGER 0 makes the close a reset (RST); the short block on drop is harmless here.
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    drop(stream);
                    continue;
                }
                let st = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, connections, stop }
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

//! How a client (the CLI, a worker) reaches a coordinator: a TCP address — TLS when it says
//! `https://`, never cleartext then — with a bearer token on every call, or an in-process connection.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::inprocess::Connector;

/// Credentials and TLS settings of a client.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientAuth {
    /// File holding the bearer token to present to the coordinator.
    #[arg(long, env = "URLFLEET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer URLFLEET_TOKEN or --token-file: a flag shows in `ps`).
    #[arg(long, env = "URLFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signs the coordinator's certificate, for `https://` addresses
    /// (default: the public web's roots).
    #[arg(long, env = "URLFLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --client-key.
    #[arg(long, env = "URLFLEET_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(long, env = "URLFLEET_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Where a coordinator is.
#[derive(Debug, Clone)]
pub enum Target {
    /// `http://host:port` or `https://host:port`, or several of them separated by commas; a host name
    /// stands for every address it resolves to (a headless Service's name, say). Any of them will do.
    Address(String),
    /// In this process.
    InProcess(Connector),
}

/// HTTP/2 keepalive of client connections: a ping after this long without traffic…
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// …answered within this, or the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientAuth {
    /// The token to present, if any.
    pub fn bearer(&self) -> Result<Bearer> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let value = match token.filter(|t| !t.is_empty()) {
            Some(t) => {
                Some(MetadataValue::try_from(format!("Bearer {t}")).context("the token is not printable ASCII")?)
            }
            None => None,
        };
        Ok(Bearer(value))
    }

    /// A channel to `target`: the first of its addresses that answers.
    pub async fn channel(&self, target: &Target) -> Result<Channel> {
        Ok(self.channel_from(target, 0).await?.0)
    }

    /// A channel to the first of `target`'s addresses that answers, trying them in turn from the
    /// `start`th (modulo their number); returns the channel and the position of the address that
    /// answered, so that a client can move on from it when it fails.
    pub async fn channel_from(&self, target: &Target, start: usize) -> Result<(Channel, usize)> {
        let list = match target {
            Target::InProcess(c) => return Ok((c.channel().await.context("connecting in process")?, 0)),
            Target::Address(a) => a,
        };
        let candidates = candidates(list).await?;
        let mut last = None;
        for i in 0..candidates.len() {
            let at = (start + i) % candidates.len();
            match self.channel_to(&candidates[at]).await {
                Ok(channel) => return Ok((channel, at)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator address in {list:?}")))
    }

    /// A channel to one resolved address.
    async fn channel_to(&self, c: &Candidate) -> Result<Channel> {
        let addr = &c.given;
        let mut endpoint = Endpoint::from_shared(c.uri.clone())
            .with_context(|| format!("bad coordinator address {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        match endpoint.uri().scheme_str() {
            Some("https") => {
                let mut tls = ClientTlsConfig::new();
                if let Some(host) = &c.host_name {
                    tls = tls.domain_name(host.clone());
                }
                tls = match &self.ca_cert {
                    Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
                    None => tls.with_webpki_roots(),
                };
                if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                endpoint = endpoint.tls_config(tls).context("TLS settings")?;
            }
            Some("http") => {
                if self.client_cert.is_some() || self.ca_cert.is_some() {
                    bail!("TLS settings given for {addr}: use an https:// address");
                }
            }
            _ => bail!("the coordinator address {addr:?} must start with http:// or https://"),
        }
        if c.host_name.is_some() {
            endpoint = endpoint.origin(addr.parse().with_context(|| format!("bad coordinator address {addr:?}"))?);
        }
        let shown = match &c.host_name {
            Some(_) => format!("{addr} ({})", c.uri),
            None => addr.clone(),
        };
        endpoint.connect().await.with_context(|| format!("cannot reach the coordinator at {shown}"))
    }
}

/// Where in a list of coordinator addresses a client whose id is `id` starts (modulo the list's
/// length): clients spread over the coordinators by id, the same way on every start.
pub fn spread(id: &str) -> usize {
    id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)))
}

/// One address a coordinator may be reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    /// The address as given.
    given: String,
    /// The address to connect to: the given one with its host name resolved.
    uri: String,
    /// The host name resolved, for TLS and the `:authority` of requests.
    host_name: Option<String>,
}

/// The addresses of a comma-separated list, each host name expanded to every address it resolves
/// to (in the resolver's order). A name that does not resolve is kept as given, so that the attempt
/// to connect says why it failed.
async fn candidates(list: &str) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for given in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let uri: tonic::transport::Uri = given.parse().with_context(|| format!("bad coordinator address {given:?}"))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            bail!("the coordinator address {given:?} must look like http://host:port or https://host:port");
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        let as_given = Candidate { given: given.to_string(), uri: given.to_string(), host_name: None };
        if bare.parse::<std::net::IpAddr>().is_ok() {
            out.push(as_given);
            continue;
        }
        match tokio::net::lookup_host((bare, port)).await {
            Ok(addrs) => {
                let before = out.len();
                for a in addrs {
                    let c = Candidate {
                        given: given.to_string(),
                        uri: format!("{scheme}://{a}"),
                        host_name: Some(bare.to_string()),
                    };
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
                if out.len() == before {
                    out.push(as_given);
                }
            }
            Err(_) => out.push(as_given),
        }
    }
    if out.is_empty() {
        bail!("no coordinator address given");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_and_names_expand_to_every_address() {
        let c = candidates("http://127.0.0.1:1, https://localhost:2").await.unwrap();
        assert_eq!(
            c[0],
            Candidate { given: "http://127.0.0.1:1".into(), uri: "http://127.0.0.1:1".into(), host_name: None }
        );
        let named: Vec<_> = c[1..].iter().map(|c| (c.uri.as_str(), c.host_name.as_deref())).collect();
        assert!(named.contains(&("https://127.0.0.1:2", Some("localhost"))), "{named:?}");
        assert!(c[1..].iter().all(|c| c.given == "https://localhost:2"));
        assert!(candidates(" , ").await.is_err());
        assert!(candidates("127.0.0.1:7700").await.is_err());
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A client channel with the bearer token on every call.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

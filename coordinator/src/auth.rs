//! Who may call a coordinator: bearer tokens with roles, checked by a tonic interceptor on every
//! service but health.
//!
//! A token list (a file or an environment variable) has one token a line: `ROLE NAME TOKEN`, `#`
//! comments and blank lines ignored. Several lines may share a name and role, so a token is rotated by
//! adding the new one, moving the clients over, then removing the old one. Tokens are compared as
//! SHA-256 digests in constant time, against every entry, so neither a token's content nor its length
//! shows in the time a check takes. Roles:
//! - `worker`: the worker protocol only; the token's name binds the worker's identity (its leases are
//!   held by `NAME/WORKER_ID`), so a worker cannot report for or end another's leases;
//! - `submitter`: submits jobs, and reads and cancels its own (the token's name owns them);
//! - `admin`: everything, every job.
//!
//! Without a token list every caller is an anonymous admin; the coordinator then refuses to listen
//! anywhere but loopback unless told `--allow-unauthenticated`.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// The worker protocol only.
    Worker,
    /// Its own jobs.
    Submitter,
    /// Everything.
    Admin,
}

/// An authenticated caller, put into each request's extensions by the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its role.
    pub role: Role,
    /// Its token's name (empty for the anonymous admin of a coordinator without tokens).
    pub name: Arc<str>,
}

impl Caller {
    /// The caller of a coordinator without tokens.
    pub fn anonymous() -> Self {
        Self { role: Role::Admin, name: "".into() }
    }

    /// The caller of a request that passed the interceptor.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request.extensions().get::<Self>().cloned().ok_or_else(|| Status::unauthenticated("no credentials"))
    }

    /// Whether the caller may see and change a job `owner` submitted.
    pub fn may_touch(&self, owner: &str) -> bool {
        self.role == Role::Admin || *self.name == *owner
    }

    /// The owner this caller's reads are limited to: `None` for an admin.
    pub fn scope(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(&*self.name)
    }
}

/// Shortest token accepted: a guessable token is no credential.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token name.
pub const MAX_NAME_BYTES: usize = 64;

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// The accepted tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    /// Parses a token list; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("token list line {}: {why}", n + 1);
            let mut fields = line.split_whitespace();
            let (Some(role), Some(name), Some(token), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected ROLE NAME TOKEN"));
            };
            let role: Role = role.parse().map_err(|_| bad("the role must be worker, submitter or admin"))?;
            let name_ok = name.len() <= MAX_NAME_BYTES
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !name_ok {
                return Err(bad(&format!("a name has at most {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ -")));
            }
            if token.len() < MIN_TOKEN_BYTES {
                return Err(bad(&format!("a token has at least {MIN_TOKEN_BYTES} characters")));
            }
            entries.push(Entry { digest: digest(token), caller: Caller { role, name: name.into() } });
        }
        if entries.is_empty() {
            return Err("the token list holds no token".into());
        }
        Ok(Self { entries })
    }

    /// The token list of a file, or of an environment variable's value; `None` when neither is given.
    pub fn load(file: Option<&Path>, inline: Option<&str>) -> Result<Option<Self>, String> {
        let mut text = String::new();
        if let Some(f) = file {
            text =
                std::fs::read_to_string(f).map_err(|e| format!("cannot read the token list {}: {e}", f.display()))?;
        }
        if let Some(t) = inline {
            // In an environment variable, `;` may stand for a line break.
            text.push('\n');
            text.push_str(&t.replace(';', "\n"));
        }
        if file.is_none() && inline.is_none() {
            return Ok(None);
        }
        Self::parse(&text).map(Some)
    }

    /// The caller a presented token identifies. Every entry is compared, each in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let d = digest(presented);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&d)) && found.is_none() {
                found = Some(e.caller.clone());
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The interceptor of one service: authenticates the bearer token and admits the given roles.
#[derive(Clone)]
pub struct Gate {
    tokens: Option<Arc<Tokens>>,
    admits: &'static [Role],
    what: &'static str,
    require_client_cert: bool,
}

impl Gate {
    /// A gate for `what` (named in refusals) that admits `admits`; everyone when `tokens` is `None`.
    pub fn new(tokens: Option<Arc<Tokens>>, admits: &'static [Role], what: &'static str) -> Self {
        Self { tokens, admits, what, require_client_cert: false }
    }

    /// Also requires a client certificate that the TLS layer verified (mutual TLS).
    pub fn with_client_cert(mut self, required: bool) -> Self {
        self.require_client_cert = required;
        self
    }

    fn admit(&self, request: &Request<()>) -> Result<Caller, Status> {
        if self.require_client_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated(format!("{} needs a client certificate", self.what)));
        }
        let Some(tokens) = &self.tokens else { return Ok(Caller::anonymous()) };
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))?;
        let caller = tokens.authenticate(token.trim()).ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if !self.admits.contains(&caller.role) {
            return Err(Status::permission_denied(format!("a {} token may not use {}", caller.role, self.what)));
        }
        Ok(caller)
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.admit(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    const LIST: &str = "# rotation: two tokens of one worker\n\
                        worker fleet-a aaaaaaaaaaaaaaaaaaaa\n\
                        worker fleet-a bbbbbbbbbbbbbbbbbbbb\n\
                        submitter seo cccccccccccccccccccc\n\
                        admin ops dddddddddddddddddddd\n";

    fn call(gate: &mut Gate, token: Option<&str>) -> Result<Caller, tonic::Code> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        gate.call(r).map(|r| r.extensions().get::<Caller>().unwrap().clone()).map_err(|s| s.code())
    }

    #[test]
    fn tokens_name_their_caller_and_roles_limit_the_services() {
        let tokens = Some(Arc::new(Tokens::parse(LIST).unwrap()));
        let mut work = Gate::new(tokens.clone(), &[Role::Worker, Role::Admin], "the worker protocol");
        let mut jobs = Gate::new(tokens, &[Role::Submitter, Role::Admin], "the job API");
        for t in ["aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"] {
            assert_eq!(call(&mut work, Some(t)).unwrap(), Caller { role: Role::Worker, name: "fleet-a".into() });
            assert_eq!(call(&mut jobs, Some(t)).unwrap_err(), tonic::Code::PermissionDenied);
        }
        assert_eq!(call(&mut work, Some("cccccccccccccccccccc")).unwrap_err(), tonic::Code::PermissionDenied);
        assert_eq!(call(&mut jobs, Some("cccccccccccccccccccc")).unwrap().name.as_ref(), "seo");
        assert_eq!(call(&mut jobs, Some("dddddddddddddddddddd")).unwrap().role, Role::Admin);
        assert_eq!(call(&mut work, Some("dddddddddddddddddddd")).unwrap().role, Role::Admin);
        for bad in [None, Some("aaaaaaaaaaaaaaaaaaa"), Some("aaaaaaaaaaaaaaaaaaaaa"), Some("")] {
            assert_eq!(call(&mut jobs, bad).unwrap_err(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn without_tokens_everyone_is_an_anonymous_admin() {
        let mut open = Gate::new(None, &[Role::Submitter, Role::Admin], "the job API");
        assert_eq!(call(&mut open, None).unwrap(), Caller::anonymous());
    }

    #[test]
    fn bad_token_lists_are_refused_naming_the_line() {
        for (list, needle) in [
            ("root x aaaaaaaaaaaaaaaaaaaa", "line 1: the role"),
            ("\nworker x short", "line 2: a token has at least"),
            ("worker a/b aaaaaaaaaaaaaaaaaaaa", "a name has"),
            ("worker aaaaaaaaaaaaaaaaaaaa", "expected ROLE NAME TOKEN"),
            ("# nothing", "no token"),
        ] {
            let e = Tokens::parse(list).unwrap_err();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
        let inline = Tokens::load(None, Some("worker w aaaaaaaaaaaaaaaaaaaa;admin o bbbbbbbbbbbbbbbbbbbb")).unwrap();
        assert_eq!(inline.unwrap().entries.len(), 2);
        assert!(Tokens::load(None, None).unwrap().is_none());
    }

    #[test]
    fn a_submitter_touches_only_its_own_jobs() {
        let seo = Caller { role: Role::Submitter, name: "seo".into() };
        assert!(seo.may_touch("seo") && !seo.may_touch("other") && !seo.may_touch(""));
        assert_eq!(seo.scope(), Some("seo"));
        let ops = Caller { role: Role::Admin, name: "ops".into() };
        assert!(ops.may_touch("seo") && ops.scope().is_none());
    }
}

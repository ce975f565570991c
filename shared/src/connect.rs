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
    /// `http://host:port` or `https://host:port`.
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

    /// A channel to `target`.
    pub async fn channel(&self, target: &Target) -> Result<Channel> {
        let addr = match target {
            Target::InProcess(c) => return c.channel().await.context("connecting in process"),
            Target::Address(a) => a,
        };
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("bad coordinator address {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        match endpoint.uri().scheme_str() {
            Some("https") => {
                let mut tls = ClientTlsConfig::new();
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
        endpoint.connect().await.with_context(|| format!("cannot reach the coordinator at {addr}"))
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

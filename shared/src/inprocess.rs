//! A gRPC connection inside one process: the client's channel and the server's incoming connections
//! are the two ends of in-memory pipes. `urlfleet check` runs its coordinator and worker this way, so
//! it opens no socket another local process could reach.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};

/// Bytes buffered in each direction of one in-process connection.
const PIPE_BYTES: usize = 1 << 20;

/// Opens in-process connections to the server holding the matching [`Incoming`].
#[derive(Debug, Clone)]
pub struct Connector(mpsc::Sender<DuplexStream>);

/// The server's side: a stream of connections for `serve_with_incoming`.
#[derive(Debug)]
pub struct Incoming(mpsc::Receiver<DuplexStream>);

/// A connected pair of ends.
pub fn pair() -> (Connector, Incoming) {
    let (tx, rx) = mpsc::channel(16);
    (Connector(tx), Incoming(rx))
}

impl Connector {
    /// A channel to the server; each (re)connect opens a new pipe.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let tx = self.0.clone();
        // The address is never resolved: the connector below makes the connection.
        Endpoint::from_static("http://in-process.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let tx = tx.clone();
                async move {
                    let (client, server) = tokio::io::duplex(PIPE_BYTES);
                    tx.send(server).await.map_err(|_| std::io::Error::other("the in-process server is gone"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(client))
                }
            }))
            .await
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<DuplexStream, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}

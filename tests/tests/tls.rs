//! TLS on the wire: a coordinator with a certificate serves TLS only; `https://` means TLS or a clear
//! error, never cleartext; with a client CA, workers must present a certificate it signed; the
//! worker protocol can have a listener of its own.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use urlfleet_shared::connect::{ClientAuth, Target};
use urlfleet_shared::proto::v1::{self as pb, job_service_client::JobServiceClient};
use urlfleet_tests::cluster::{impolite, submit};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in a fresh folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("urlfleet-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "urlfleet test CA");
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |file: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, file);
            p.extended_key_usages = vec![usage];
            std::fs::write(dir.join(format!("{file}.pem")), p.signed_by(&key, &issuer).unwrap().pem()).unwrap();
            std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        };
        leaf("server", vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
        leaf("client", vec!["worker".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn client(&self, with_cert: bool) -> ClientAuth {
        ClientAuth {
            ca_cert: Some(self.path("ca.pem")),
            client_cert: with_cert.then(|| self.path("client.pem")),
            client_key: with_cert.then(|| self.path("client.key")),
            ..Default::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https(addr: &str) -> Target {
    Target::Address(addr.replace("http://", "https://"))
}

async fn jobs(auth: &ClientAuth, target: &Target) -> anyhow::Result<JobServiceClient<tonic::transport::Channel>> {
    Ok(JobServiceClient::new(auth.channel(target).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_and_required_and_https_never_falls_back_to_cleartext() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new("serve");
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |c| {
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
        c.tls_client_ca = Some(pki.path("ca.pem"));
    })
    .await;
    let target = https(&coordinator.addr);

    // The job API over TLS, verified against the CA; no client certificate needed for it.
    let mut client = jobs(&pki.client(false), &target).await.unwrap();
    client.list_jobs(pb::ListJobsRequest::default()).await.unwrap();
    // Not against the public roots, and not in cleartext.
    assert!(jobs(&ClientAuth::default(), &target).await.is_err(), "an unknown CA is refused");
    let mut clear = jobs(&ClientAuth::default(), &Target::Address(coordinator.addr.clone())).await.unwrap();
    assert!(clear.list_jobs(pb::ListJobsRequest::default()).await.is_err(), "a TLS port speaks no cleartext");

    // Workers need a client certificate the CA signed.
    let id = submit(&mut client, &[site.url("/status/200")], impolite()).await.unwrap().job.unwrap().id;
    let mut channel = pki.client(false).channel(&target).await.unwrap();
    let mut work = pb::worker_service_client::WorkerServiceClient::new(&mut channel);
    let hello = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(pb::Hello { worker_id: "w".into(), ..Default::default() })),
    };
    let refused = work.work(tokio_stream::iter(vec![hello])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // A client certificate another CA signed does not get through the handshake.
    let stranger = Pki::new("stranger");
    let forged = ClientAuth {
        client_cert: Some(stranger.path("client.pem")),
        client_key: Some(stranger.path("client.key")),
        ..pki.client(false)
    };
    let e = match forged.channel(&target).await {
        Err(e) => format!("{e:#}"),
        Ok(mut ch) => {
            let mut work = pb::worker_service_client::WorkerServiceClient::new(&mut ch);
            let hello = pb::WorkerMessage {
                msg: Some(pb::worker_message::Msg::Hello(pb::Hello { worker_id: "w".into(), ..Default::default() })),
            };
            format!("{:?}", work.work(tokio_stream::iter(vec![hello])).await.expect_err("a stranger's certificate"))
        }
    };
    assert!(!e.is_empty());
    let auth = pki.client(true);
    let addr = target_addr(&target);
    let worker = Worker::spawn(&addr, move |c| c.auth = auth);
    let done = urlfleet_tests::cluster::wait_done(&mut client, id, Duration::from_secs(20)).await;
    assert_eq!(done.counts.unwrap().ok, 1);
    worker.stop().await;
    coordinator.stop().await;
}

fn target_addr(t: &Target) -> String {
    match t {
        Target::Address(a) => a.clone(),
        Target::InProcess(_) => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_address_to_a_cleartext_coordinator_is_an_error() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::fresh(Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let Err(e) = jobs(&ClientAuth::default(), &https(&coordinator.addr)).await else { panic!("no cleartext fallback") };
    assert!(format!("{e:#}").contains("cannot reach"), "{e:#}");
    let pki = Pki::new("plain");
    let e = pki.client(false).channel(&Target::Address(coordinator.addr.clone())).await.unwrap_err();
    assert!(e.to_string().contains("use an https:// address"), "{e}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_protocol_can_have_a_listener_of_its_own() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let work_addr = format!("http://127.0.0.1:{port}");
    let coordinator = Coordinator::spawn(&db.url, |c| c.worker_listen = Some(([127, 0, 0, 1], port).into())).await;
    let mut client = coordinator.client().await;
    let id = submit(&mut client, &[site.url("/status/200")], impolite()).await.unwrap().job.unwrap().id;
    // The job API is not on the worker listener, and the worker protocol is not on the main one.
    let mut wrong = JobServiceClient::connect(work_addr.clone()).await.unwrap();
    let e = wrong.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    let mut main = pb::worker_service_client::WorkerServiceClient::connect(coordinator.addr.clone()).await.unwrap();
    let hello = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(pb::Hello { worker_id: "w".into(), ..Default::default() })),
    };
    assert_eq!(main.work(tokio_stream::iter(vec![hello])).await.unwrap_err().code(), tonic::Code::Unimplemented);
    let worker = Worker::spawn(&work_addr, |_| {});
    let done = urlfleet_tests::cluster::wait_done(&mut client, id, Duration::from_secs(20)).await;
    assert_eq!(done.counts.unwrap().ok, 1);
    worker.stop().await;
    coordinator.stop().await;
}

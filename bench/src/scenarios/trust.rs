//! Scenario 10: what the trust boundary costs — the same cluster run (one fast host, politeness off,
//! PostgreSQL) with and without tokens and TLS, and against a build without fencing when one is given.

use super::*;

/// A CA and certificates for 127.0.0.1, as PEM files in the scratch directory.
fn certificates(ctx: &Ctx) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "urlfleet bench CA");
    std::fs::write(ctx.file("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for (name, san, usage) in [
        ("server", "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", "worker", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![san.to_string()])?;
        p.extended_key_usages = vec![usage];
        std::fs::write(ctx.file(&format!("{name}.pem")), p.signed_by(&key, &issuer)?.pem())?;
        std::fs::write(ctx.file(&format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// One mode of the run: extra coordinator, worker and client arguments, and the scheme.
struct Mode {
    label: &'static str,
    binary: PathBuf,
    coordinator: Vec<String>,
    client: Vec<String>,
    worker: Vec<String>,
    https: bool,
}

/// Scenario 10: 100,000 URLs through a coordinator and one worker, in each mode, alternating.
pub async fn trust(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(100_000, 300);
    report.section(
        &format!("10. Trust boundary: {n} URLs, one fast host, coordinator + 1 worker (PostgreSQL)"),
        &["mode", "walls", "best URLs/s", "vs plain"],
    );
    let Some((nginx, port)) = start_nginx(ctx).await? else {
        report.note("nginx is not installed: scenario skipped.");
        return Ok(());
    };
    let list = ctx.file("trust.txt");
    write_list(&list, (0..n).map(|i| format!("http://127.0.0.1:{port}/t/{i}")))?;
    certificates(ctx)?;
    let tokens = ctx.file("tokens");
    std::fs::write(&tokens, "worker bench wwwwwwwwwwwwwwwwwwwwwwww\nsubmitter me ssssssssssssssssssssssss\n")?;
    let path = |f: &str| ctx.file(f).display().to_string();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut modes = Vec::new();
    if let Some(baseline) = std::env::var_os("URLFLEET_BASELINE") {
        modes.push(Mode {
            label: "a build without fencing or tokens (URLFLEET_BASELINE)",
            binary: baseline.into(),
            coordinator: vec![],
            client: vec![],
            worker: vec![],
            https: false,
        });
    }
    modes.push(Mode {
        label: "fencing, no tokens, cleartext",
        binary: ctx.urlfleet.clone(),
        coordinator: vec![],
        client: vec![],
        worker: vec![],
        https: false,
    });
    modes.push(Mode {
        label: "fencing + tokens",
        binary: ctx.urlfleet.clone(),
        coordinator: vec!["--tokens-file".into(), path("tokens")],
        client: s(&["--token", "ssssssssssssssssssssssss"]),
        worker: s(&["--token", "wwwwwwwwwwwwwwwwwwwwwwww"]),
        https: false,
    });
    modes.push(Mode {
        label: "fencing + tokens + mutual TLS",
        binary: ctx.urlfleet.clone(),
        coordinator: vec![
            "--tokens-file".into(),
            path("tokens"),
            "--tls-cert".into(),
            path("server.pem"),
            "--tls-key".into(),
            path("server.key"),
            "--tls-client-ca".into(),
            path("ca.pem"),
        ],
        client: vec!["--token".into(), "ssssssssssssssssssssssss".into(), "--ca-cert".into(), path("ca.pem")],
        worker: vec![
            "--token".into(),
            "wwwwwwwwwwwwwwwwwwwwwwww".into(),
            "--ca-cert".into(),
            path("ca.pem"),
            "--client-cert".into(),
            path("client.pem"),
            "--client-key".into(),
            path("client.key"),
        ],
        https: true,
    });
    let rounds = if ctx.smoke { 1 } else { 3 };
    let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (m, w) in modes.iter().zip(walls.iter_mut()) {
            w.push(run_mode(ctx, m, &list, n).await?);
        }
    }
    let best = |w: &[Duration]| w.iter().min().copied().unwrap_or_default();
    let plain = modes.iter().position(|m| m.label.starts_with("fencing, no tokens")).map(|i| rate(n, best(&walls[i])));
    for (m, w) in modes.iter().zip(&walls) {
        let r = rate(n, best(w));
        report.row(&[
            m.label.into(),
            w.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(", ") + " s",
            format!("{r:.0}"),
            plain.map(|p| format!("{:.2}×", r / p)).unwrap_or_default(),
        ]);
    }
    nginx.stop().await?;
    Ok(())
}

async fn run_mode(ctx: &Ctx, m: &Mode, list: &Path, n: usize) -> Result<Duration> {
    let db = ctx.fresh_db("trust").await?;
    let port = proc::free_port()?;
    let mut args =
        s_vec(&["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--db", &db, "--lease-size", "500"]);
    args.extend(m.coordinator.iter().cloned());
    let coordinator = Service::start("coordinator", &m.binary, &args, &[])?;
    proc::wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await?;
    let addr = format!("{}://127.0.0.1:{port}", if m.https { "https" } else { "http" });
    let mut wargs = s_vec(&["worker", "--coordinator", &addr, "--allow", "127.0.0.0/8", "--retries", "0"]);
    wargs.extend(m.worker.iter().cloned());
    let worker = Service::start("worker", &m.binary, &wargs, &[])?;
    let mut cargs = s_vec(&[
        "submit",
        &list.display().to_string(),
        "--watch",
        "--host-concurrency",
        "128",
        "--host-interval",
        "0ms",
        "--coordinator",
        &addr,
    ]);
    cargs.extend(m.client.iter().cloned());
    let submit = proc::measure(&m.binary, &cargs).await?;
    worker.stop().await?;
    coordinator.stop().await?;
    if submit.code != 0 || !submit.stderr.contains(&format!("{n} ok")) {
        bail!("{} failed (exit {}):\n{}\n{}", m.label, submit.code, submit.stdout, submit.stderr);
    }
    Ok(submit.wall)
}

fn s_vec(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

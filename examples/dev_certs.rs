//! Development credentials for the cluster-compose topology: a private CA, one certificate for
//! the NATS servers (client connections and routes), one client certificate for the nodes and
//! clients, and a random NATS password.
//!
//! ```text
//! cargo run --example dev_certs -- <directory>
//! ```
//!
//! writes `ca.pem`, `server.pem` + `server-key.pem` (valid for `localhost`, `127.0.0.1` and
//! `nats-1`..`nats-3`), `client.pem` + `client-key.pem`, and `password`. Existing files are left
//! alone, so a directory of your own certificates (same names) is used as is. For development
//! only: in production, use certificates from your own CA and a secret store for the password.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: dev_certs <directory>"))?,
    );
    std::fs::create_dir_all(&dir)?;
    if dir.join("ca.pem").exists() {
        println!("{} already holds credentials: kept", dir.display());
        return Ok(());
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "aether development CA");
    let ca_cert = ca.self_signed(&ca_key)?;

    let names = ["localhost", "nats-1", "nats-2", "nats-3"].map(str::to_owned);
    let mut server = CertificateParams::new(names.to_vec())?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server.distinguished_name.push(DnType::CommonName, "nats");
    // Routes between servers authenticate with this certificate too.
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "aether-node");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

    write_secret(&dir.join("server-key.pem"), &server_key.serialize_pem())?;
    write_secret(&dir.join("client-key.pem"), &client_key.serialize_pem())?;
    write_secret(
        &dir.join("password"),
        &format!("{:032x}", fastrand::u128(..)),
    )?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("server.pem"), server_cert.pem())?;
    std::fs::write(dir.join("client.pem"), client_cert.pem())?;
    println!("development credentials written to {}", dir.display());
    Ok(())
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

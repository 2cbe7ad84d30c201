//! Secured NATS: cluster nodes (real processes, configured only through the documented
//! `AETHER_NATS_*` variables) on a nats-server that demands a password, an NKey, a token or
//! TLS with client certificates. In each case three nodes form a cluster, serve, and fail over
//! when one is killed; wrong credentials or an untrusted certificate stop a node at once with
//! an error that names the problem; and no secret appears in any log line or error message.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aether::bus::{Bus, BusConfig, Filter};
use aether::{ClusterView, ConnectError, NatsConfig};
use common::nats::NatsServer;
use common::process::{FAST, NodeProcess, node_binary, poll};

/// What a scenario gives the nodes, and what must never show up in their output.
struct Secured {
    /// The variables that let a node in.
    env: Vec<(String, String)>,
    /// The same connection, for the test's own view and bus.
    nats: NatsConfig,
    /// Variables that must be refused, and what the refusal must say.
    wrong: Vec<(Vec<(String, String)>, &'static str)>,
    /// Strings that must appear in no log line or error (passwords, tokens, seeds, keys).
    secrets: Vec<String>,
}

fn pairs(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Three nodes join with `secured.env`, serve asks from every node, and take over a killed
/// node's shards; every refused configuration stops its node within the connection timeout
/// with the expected message; no secret is in any node's log or error.
async fn secured_cluster_serves_and_fails_over(ns: &str, server: &NatsServer, secured: Secured) {
    let logs = tempfile::tempdir().expect("log dir");
    let url = server.url();
    let log_of = |id: &str| logs.path().join(format!("{id}.log"));
    let env_of = |extra: &[(String, String)]| {
        let mut env: Vec<(String, String)> = pairs(&[("AETHER_REPLICAS", "1")]);
        env.extend(extra.iter().cloned());
        env
    };
    let mut nodes: Vec<NodeProcess> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| {
            tokio::task::block_in_place(|| {
                let mut node = NodeProcess::start_logged(
                    &node_binary(),
                    &url,
                    ns,
                    id,
                    FAST,
                    &env_of(&secured.env),
                    &log_of(id),
                );
                node.wait_ready();
                node
            })
        })
        .collect();
    // The test's own view and bus reach the cluster through the same configuration.
    let view = ClusterView::connect(secured.nats.clone(), ns)
        .await
        .expect("a view with the same credentials");
    let watcher = Bus::connect(secured.nats.clone(), BusConfig::default())
        .await
        .expect("a bus with the same credentials");
    let _system = watcher
        .subscribe(format!("{ns}.system.*").as_str(), Filter::all())
        .await
        .expect("subscribes");
    poll(
        Duration::from_secs(20),
        "a map of three nodes",
        async || {
            view.shard_map()
                .await
                .ok()
                .flatten()
                .filter(|m| m.nodes.len() == 3)
        },
    )
    .await;
    for (i, account) in ["alice", "bob", "carol"].iter().enumerate() {
        let node = &mut nodes[i];
        assert_eq!(
            tokio::task::block_in_place(|| node.command(&format!("open {account}"))),
            format!("ok {account} 0")
        );
        tokio::task::block_in_place(|| node.command(&format!("deposit {account} 7")));
    }
    // Kill one node: the others take its shards and every account still answers.
    let mut dead = nodes.remove(0);
    dead.kill();
    poll(
        Duration::from_secs(15),
        "a map without the killed node",
        async || {
            view.shard_map()
                .await
                .ok()
                .flatten()
                .filter(|m| m.nodes.len() == 2 && !m.nodes.contains(&dead.id))
        },
    )
    .await;
    for node in nodes.iter_mut() {
        for account in ["alice", "bob", "carol"] {
            assert_eq!(
                tokio::task::block_in_place(|| node.command(&format!("balance {account}"))),
                format!("ok {account} 7"),
                "{} after the failover",
                node.id
            );
        }
    }
    // Refused configurations: the node exits at once, saying why.
    for (i, (wrong, expected)) in secured.wrong.iter().enumerate() {
        let id = format!("intruder-{i}");
        let started = Instant::now();
        let mut node = tokio::task::block_in_place(|| {
            NodeProcess::start_logged(
                &node_binary(),
                &url,
                ns,
                &id,
                FAST,
                &env_of(wrong),
                &log_of(&id),
            )
        });
        let status = tokio::task::block_in_place(|| node.wait_exit(Duration::from_secs(15)));
        let took = started.elapsed();
        assert!(!status.success(), "{id} joined with {wrong:?}");
        let log = std::fs::read_to_string(log_of(&id)).expect("log");
        assert!(
            log.contains(expected),
            "{id}: expected {expected:?} in its error, got:\n{log}"
        );
        // Within the connection timeout (5 s), not the 30 s join timeout.
        assert!(
            took < Duration::from_secs(6),
            "{id} took {took:?} to give up"
        );
    }
    for node in nodes {
        tokio::task::block_in_place(|| node.shutdown());
    }
    drop(dead);
    // No secret in any log line or error message of any node.
    let mut lines = 0;
    for entry in std::fs::read_dir(logs.path()).expect("logs") {
        let path = entry.expect("entry").path();
        let log = std::fs::read_to_string(&path).expect("log");
        lines += log.lines().count();
        for secret in &secured.secrets {
            assert!(
                !log.contains(secret.as_str()),
                "a secret appears in {}",
                path.display()
            );
        }
    }
    assert!(
        lines > 50,
        "the nodes logged at debug level ({lines} lines)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_a_server_that_demands_a_password() {
    let password = "pw-0f9e2c71-never-logged";
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ user: aether, password: \"{password}\" }}"
    ));
    secured_cluster_serves_and_fails_over(
        "sec-pw",
        &server,
        Secured {
            env: pairs(&[
                ("AETHER_NATS_USER", "aether"),
                ("AETHER_NATS_PASSWORD", password),
            ]),
            nats: NatsConfig::new(server.url()).user_password("aether", password),
            wrong: vec![
                (
                    pairs(&[
                        ("AETHER_NATS_USER", "aether"),
                        ("AETHER_NATS_PASSWORD", "pw-wrong-and-secret"),
                    ]),
                    "refused the credentials",
                ),
                (Vec::new(), "refused the credentials"),
            ],
            secrets: vec![password.to_owned(), "pw-wrong-and-secret".to_owned()],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_a_server_that_demands_a_token() {
    let token = "tok-5d1c0e8a-never-logged";
    let server = NatsServer::start_with_config(&format!("authorization {{ token: \"{token}\" }}"));
    secured_cluster_serves_and_fails_over(
        "sec-token",
        &server,
        Secured {
            env: pairs(&[("AETHER_NATS_TOKEN", token)]),
            nats: NatsConfig::new(server.url()).token(token),
            wrong: vec![(
                pairs(&[("AETHER_NATS_TOKEN", "tok-wrong-and-secret")]),
                "refused the credentials",
            )],
            secrets: vec![token.to_owned(), "tok-wrong-and-secret".to_owned()],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_nkey_users() {
    let dir = tempfile::tempdir().expect("key dir");
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("a seed");
    let seed_file = dir.path().join("node.nk");
    std::fs::write(&seed_file, &seed).expect("seed file");
    let stranger = nkeys::KeyPair::new_user();
    let stranger_seed = stranger.seed().expect("a seed");
    let stranger_file = dir.path().join("stranger.nk");
    std::fs::write(&stranger_file, &stranger_seed).expect("seed file");
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ));
    let path = |p: &Path| p.display().to_string();
    secured_cluster_serves_and_fails_over(
        "sec-nkey",
        &server,
        Secured {
            env: pairs(&[("AETHER_NATS_NKEY_SEED_FILE", &path(&seed_file))]),
            nats: NatsConfig::new(server.url()).nkey_seed_file(&seed_file),
            wrong: vec![
                (
                    pairs(&[("AETHER_NATS_NKEY_SEED_FILE", &path(&stranger_file))]),
                    "refused the credentials",
                ),
                (
                    pairs(&[("AETHER_NATS_NKEY_SEED_FILE", "/nonexistent/node.nk")]),
                    "cannot read the NKey seed file",
                ),
            ],
            secrets: vec![seed, stranger_seed],
        },
    )
    .await;
}

/// An operator-managed NATS (decentralized auth, as on hosted NATS): an operator, accounts
/// it signs, users each account signs, and their `.creds` files — the JWTs nsc would write,
/// made here with the `nkeys` crate.
mod operator {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    pub struct Operator {
        key: nkeys::KeyPair,
        pub jwt: String,
        /// The system account JetStream needs in operator mode.
        system: String,
        /// `(account public key, account JWT)` for the server's resolver.
        pub accounts: Vec<(String, String)>,
    }

    pub struct Account {
        key: nkeys::KeyPair,
    }

    /// Signs `claims` (with `iss`, `iat` and `jti` filled in) as `issuer`.
    fn encode(issuer: &nkeys::KeyPair, mut claims: Value) -> String {
        claims["iss"] = json!(issuer.public_key());
        claims["iat"] = json!(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs()
        );
        claims["jti"] = json!(format!("{:032X}", fastrand::u128(..)));
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let signature = issuer.sign(signed.as_bytes()).expect("signs");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    impl Operator {
        pub fn new() -> Operator {
            let key = nkeys::KeyPair::new_operator();
            let system = nkeys::KeyPair::new_account();
            let jwt = encode(
                &key,
                json!({"sub": key.public_key(), "name": "aether-test",
                       "nats": {"type": "operator", "version": 2,
                                "system_account": system.public_key()}}),
            );
            let system_jwt = encode(
                &key,
                json!({"sub": system.public_key(), "name": "SYS",
                       "nats": {"limits": {"subs": -1, "data": -1, "payload": -1,
                                           "imports": -1, "exports": -1, "wildcards": true,
                                           "conn": -1, "leaf": -1},
                                "type": "account", "version": 2}}),
            );
            Operator {
                key,
                jwt,
                system: system.public_key(),
                accounts: vec![(system.public_key(), system_jwt)],
            }
        }

        /// A new account with JetStream enabled, registered with this operator.
        pub fn account(&mut self, name: &str) -> Account {
            let key = nkeys::KeyPair::new_account();
            let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
                "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1});
            let jwt = encode(
                &self.key,
                json!({"sub": key.public_key(), "name": name,
                       "nats": {"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}},
                                "type": "account", "version": 2}}),
            );
            self.accounts.push((key.public_key(), jwt));
            Account { key }
        }

        /// The server configuration: this operator, its accounts preloaded in memory.
        pub fn server_config(&self) -> String {
            let preload: Vec<String> = self
                .accounts
                .iter()
                .map(|(key, jwt)| format!("  {key}: \"{jwt}\""))
                .collect();
            format!(
                "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
                 resolver_preload: {{\n{}\n}}\n",
                self.jwt,
                self.system,
                preload.join("\n")
            )
        }
    }

    impl Account {
        /// A detached account the operator never signed: its users are refused.
        pub fn rogue() -> Account {
            Account {
                key: nkeys::KeyPair::new_account(),
            }
        }

        /// A `.creds` file's text for a new user of this account, with `permissions` (the
        /// JWT's `pub`/`sub` allow lists; `{}` for none), and the user's seed.
        pub fn user_creds(&self, name: &str, permissions: Value) -> (String, String) {
            let user = nkeys::KeyPair::new_user();
            let mut nats = json!({"pub": {}, "sub": {}, "subs": -1, "data": -1,
                                  "payload": -1, "type": "user", "version": 2});
            if let Some(map) = permissions.as_object() {
                for (k, v) in map {
                    nats[k] = v.clone();
                }
            }
            let jwt = encode(
                &self.key,
                json!({"sub": user.public_key(), "name": name, "nats": nats}),
            );
            let seed = user.seed().expect("seed");
            let creds = format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            );
            (creds, seed)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_users_with_creds_files_from_an_operator() {
    let dir = tempfile::tempdir().expect("creds dir");
    let mut op = operator::Operator::new();
    let bank = op.account("bank");
    let (creds, seed) = bank.user_creds("node", serde_json::json!({}));
    let creds_file = dir.path().join("node.creds");
    std::fs::write(&creds_file, creds).expect("creds file");
    let (rogue_creds, rogue_seed) =
        operator::Account::rogue().user_creds("rogue", serde_json::json!({}));
    let rogue_file = dir.path().join("rogue.creds");
    std::fs::write(&rogue_file, rogue_creds).expect("creds file");
    let server = NatsServer::start_with_config(&op.server_config());
    let path = |p: &Path| p.display().to_string();
    secured_cluster_serves_and_fails_over(
        "sec-creds",
        &server,
        Secured {
            env: pairs(&[("AETHER_NATS_CREDS", &path(&creds_file))]),
            nats: NatsConfig::new(server.url()).credentials_file(&creds_file),
            wrong: vec![
                // A user of an account the operator never signed.
                (
                    pairs(&[("AETHER_NATS_CREDS", &path(&rogue_file))]),
                    "refused the credentials",
                ),
                (
                    pairs(&[("AETHER_NATS_CREDS", "/nonexistent/node.creds")]),
                    "cannot read the credentials file",
                ),
            ],
            secrets: vec![seed, rogue_seed],
        },
    )
    .await;
}

/// A private CA, a server certificate for 127.0.0.1, and client certificates: one from the
/// CA, one self-signed (untrusted).
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
    /// The private keys' PEM text: secrets.
    keys: Vec<String>,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    let dir = tempfile::tempdir().expect("pki dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("pem file");
        path
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "aether test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        (params, key)
    };
    let (params, server_key) = leaf("nats-server", ExtendedKeyUsagePurpose::ServerAuth);
    let server = params
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    let (params, client_key) = leaf("aether-node", ExtendedKeyUsagePurpose::ClientAuth);
    let client = params
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client certificate");
    let (params, rogue_key) = leaf("rogue", ExtendedKeyUsagePurpose::ClientAuth);
    let rogue = params.self_signed(&rogue_key).expect("rogue certificate");
    let keys = vec![
        server_key.serialize_pem(),
        client_key.serialize_pem(),
        rogue_key.serialize_pem(),
    ];
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server.pem()),
        server_key: write("server-key.pem", &keys[0]),
        client_cert: write("client.pem", &client.pem()),
        client_key: write("client-key.pem", &keys[1]),
        rogue_cert: write("rogue.pem", &rogue.pem()),
        rogue_key: write("rogue-key.pem", &keys[2]),
        keys,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_client_certificates() {
    let pki = pki();
    let path = |p: &Path| p.display().to_string();
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 2 }}",
        path(&pki.server_cert),
        path(&pki.server_key),
        path(&pki.ca)
    ));
    let trusted = pairs(&[
        ("AETHER_NATS_TLS_REQUIRED", "1"),
        ("AETHER_NATS_TLS_CA", &path(&pki.ca)),
        ("AETHER_NATS_TLS_CERT", &path(&pki.client_cert)),
        ("AETHER_NATS_TLS_KEY", &path(&pki.client_key)),
    ]);
    let secrets: Vec<String> = pki
        .keys
        .iter()
        .map(|pem| {
            // The base64 body of each key, which is what a leak would show.
            pem.lines().filter(|l| !l.starts_with("-----")).collect()
        })
        .collect();
    secured_cluster_serves_and_fails_over(
        "sec-tls",
        &server,
        Secured {
            env: trusted,
            nats: NatsConfig::new(server.url())
                .require_tls(true)
                .tls_ca_file(&pki.ca)
                .tls_client_cert(&pki.client_cert, &pki.client_key),
            wrong: vec![
                // The server's certificate is not trusted without the private CA.
                (
                    pairs(&[
                        ("AETHER_NATS_TLS_REQUIRED", "1"),
                        ("AETHER_NATS_TLS_CERT", &path(&pki.client_cert)),
                        ("AETHER_NATS_TLS_KEY", &path(&pki.client_key)),
                    ]),
                    "TLS with NATS",
                ),
                // A client certificate the server's CA did not sign.
                (
                    pairs(&[
                        ("AETHER_NATS_TLS_REQUIRED", "1"),
                        ("AETHER_NATS_TLS_CA", &path(&pki.ca)),
                        ("AETHER_NATS_TLS_CERT", &path(&pki.rogue_cert)),
                        ("AETHER_NATS_TLS_KEY", &path(&pki.rogue_key)),
                    ]),
                    "NATS at",
                ),
            ],
            secrets,
        },
    )
    .await;
}

/// In process, the typed errors themselves: refused credentials are `Auth`, an untrusted
/// server certificate is `Tls`, both within the connection timeout and without the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_keep_secrets_out() {
    let password = "pw-typed-secret";
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ user: aether, password: \"{password}\" }}"
    ));
    let started = Instant::now();
    let wrong = NatsConfig::new(server.url()).user_password("aether", "pw-wrong-typed-secret");
    match ClusterView::connect(wrong.clone(), "typed").await {
        Err(aether::cluster::ClusterError::Connect(ConnectError::Auth { servers, reason })) => {
            assert_eq!(servers, server.url());
            assert!(!reason.contains("pw-wrong-typed-secret"), "{reason}");
        }
        Err(other) => panic!("expected Auth, got {other}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
    // The same refusal through the store and the bus.
    let Err(store) =
        aether::store::JetStreamStore::connect(wrong.clone(), "typed", Default::default()).await
    else {
        panic!("the store connected with a wrong password");
    };
    assert!(
        matches!(
            store,
            aether::StoreError::Connect(ConnectError::Auth { .. })
        ),
        "{store}"
    );
    let Err(bus) = Bus::connect(wrong, BusConfig::default()).await else {
        panic!("the bus connected with a wrong password");
    };
    assert!(
        matches!(
            bus,
            aether::bus::SubscribeError::Connect(ConnectError::Auth { .. })
        ),
        "{bus}"
    );
    // Credentials written into the URL are used (not silently dropped) and never shown.
    let in_url = format!("nats://aether:pw-url-secret@127.0.0.1:{}", server.port);
    match ClusterView::connect(NatsConfig::new(in_url.clone()), "typed").await {
        Err(aether::cluster::ClusterError::Connect(ConnectError::Auth { servers, reason })) => {
            assert_eq!(servers, server.url(), "the URL without its credentials");
            assert!(!reason.contains("pw-url-secret"), "{reason}");
        }
        Err(other) => panic!("expected Auth for the URL's wrong password, got {other}"),
        Ok(_) => panic!("connected with the URL's wrong password"),
    }
    let good_url = format!("nats://aether:{password}@127.0.0.1:{}", server.port);
    let store =
        aether::store::JetStreamStore::connect(good_url.as_str(), "typed", Default::default())
            .await;
    assert!(store.is_ok(), "the URL's right password is used");
    assert!(started.elapsed() < Duration::from_secs(5));
    let shown = format!("{:?}", NatsConfig::new(in_url));
    assert!(!shown.contains("pw-url-secret"), "{shown}");
    // A client that requires TLS from a server without it fails at once, as a TLS failure.
    let started = Instant::now();
    match ClusterView::connect(
        NatsConfig::new(server.url())
            .user_password("aether", password)
            .require_tls(true),
        "typed",
    )
    .await
    {
        Err(aether::cluster::ClusterError::Connect(ConnectError::Tls { .. })) => {}
        Err(other) => panic!("expected Tls, got {other}"),
        Ok(_) => panic!("connected without TLS though it was required"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // TLS: a server certificate from a CA the client does not trust.
    let pki = pki();
    let path = |p: &Path| p.display().to_string();
    let tls = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 2 }}",
        path(&pki.server_cert),
        path(&pki.server_key)
    ));
    let started = Instant::now();
    let untrusted = NatsConfig::new(tls.url()).require_tls(true);
    match ClusterView::connect(untrusted, "typed").await {
        Err(aether::cluster::ClusterError::Connect(ConnectError::Tls { .. })) => {}
        Err(other) => panic!("expected Tls, got {other}"),
        Ok(_) => panic!("trusted a certificate from an unknown CA"),
    }
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// The permissions block of `docs/security.md`, for namespace `ns` instead of `bank`.
fn documented_permissions(ns: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    let section = doc
        .split("## The permissions of a namespace")
        .nth(1)
        .expect("the permissions section");
    let block = section
        .split("```conf\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a conf block");
    assert!(block.trim_start().starts_with("permissions:"), "{block}");
    block.replace("bank", ns)
}

/// Two tenants, each a NATS account whose user has the documented permissions of its
/// namespace: both serve, and every attempt with one tenant's credentials on the other's
/// namespace is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_two_accounts_cannot_reach_each_other() {
    use aether::Runtime;
    use aether::prelude::*;
    use common::{Counter, CounterCmd};
    use futures_util::StreamExt;

    let user = |ns: &str| {
        format!(
            "{{ user: {ns}, password: \"pw-{ns}-secret\", {} }}",
            documented_permissions(ns)
        )
    };
    // Account A also has a user limited to another namespace, tc: it shows the permissions
    // are enforced inside an account, not only the account boundary.
    let server = NatsServer::start_with_config(&format!(
        "accounts {{\n\
           TENANT_A: {{ jetstream: enabled, users: [ {}, {} ] }}\n\
           TENANT_B: {{ jetstream: enabled, users: [ {} ] }}\n\
         }}",
        user("ta"),
        user("tc"),
        user("tb")
    ));
    let creds = |ns: &str| {
        NatsConfig::new(server.url())
            .user_password(ns, format!("pw-{ns}-secret"))
            .connect_timeout(Duration::from_secs(2))
    };
    let node = |ns: &'static str| counter_node(creds(ns), ns, format!("{ns}-1"));
    let a = node("ta").await;
    let b = node("tb").await;

    // Both serve, with their bus, under the documented permissions.
    let mut b_events = b
        .bus()
        .subscribe("tb.events.counter.*", aether::bus::Filter::all())
        .await
        .expect("tenant b follows its own bus");
    assert_eq!(
        a.actor::<Counter>("x")
            .unwrap()
            .ask(CounterCmd::Add(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        b.actor::<Counter>("x")
            .unwrap()
            .ask(CounterCmd::Add(3))
            .await
            .unwrap(),
        3
    );
    tokio::time::timeout(Duration::from_secs(5), b_events.next())
        .await
        .expect("tenant b sees its own event")
        .expect("an event");
    let view_b = ClusterView::connect(creds("tb"), "tb")
        .await
        .expect("b's own view");
    assert!(view_b.shard_map().await.expect("b's map").is_some());
    // A durable subscription (a pull consumer on b's event stream) works under b's permissions.
    let b_reader = Bus::connect(creds("tb"), BusConfig::default())
        .await
        .expect("b's own bus connection");
    let mut durable = b_reader
        .durable("audit", "tb.events.counter.*", Filter::all())
        .await
        .expect("a durable subscription under b's permissions");
    let stored = tokio::time::timeout(Duration::from_secs(10), durable.next())
        .await
        .expect("a stored event within 10 s")
        .expect("the durable subscription reads");
    assert_eq!(stored.envelope.actor.id.as_str(), "x");
    durable
        .ack()
        .await
        .expect("acknowledged under b's permissions");

    // Nothing either tenant did needed more than the documented permissions.
    let log = server.log();
    assert!(
        !log.contains("Violation"),
        "the documented permissions refused something a node does:\n{}",
        log.lines()
            .filter(|l| l.contains("Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // With tenant a's credentials, every way into tenant b is refused.
    let intruder = creds("ta");
    // A stream read (the JetStream store of namespace tb).
    let options = aether::store::JetStreamOptions {
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    assert!(
        aether::store::JetStreamStore::connect(intruder.clone(), "tb", options)
            .await
            .is_err(),
        "tenant a opened tenant b's event stream"
    );
    // A KV read (the cluster's buckets of tb).
    assert!(
        ClusterView::connect(intruder.clone(), "tb").await.is_err(),
        "tenant a read tenant b's buckets"
    );
    // An actor call: a raw request on the subject of tb's counter "x".
    let shard = b.cluster().unwrap().locate::<Counter>("x").shard;
    let raw = async_nats::ConnectOptions::new()
        .user_and_password("ta".into(), "pw-ta-secret".into())
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(server.url())
        .await
        .expect("tenant a connects");
    let frame = aether::wire::RemoteRequest {
        format: aether::wire::BASE_FRAME_FORMAT,
        namespace: "tb".into(),
        kind: "counter".into(),
        id: "x".into(),
        command_id: CommandId::random(),
        correlation_id: CommandId::random(),
        causation_id: None,
        timeout_ms: 1000,
        chain: Vec::new(),
        expects_reply: true,
        command: rmp_serde::to_vec_named(&CounterCmd::Add(100)).unwrap(),
        effect: None,
        control: None,
        traced: None,
    }
    .encode()
    .unwrap();
    assert!(
        raw.request(format!("aether.tb.shard.{shard}.counter.x"), frame.into())
            .await
            .is_err(),
        "tenant a called tenant b's actor"
    );
    // A cluster client of tb with a's credentials does not start.
    assert!(
        Runtime::builder()
            .namespace("tb")
            .register::<Counter>()
            .cluster_client(intruder.clone())
            .start()
            .await
            .is_err(),
        "tenant a became a client of tenant b"
    );
    // A bus subscription: tenant a listens on tb's live bus while b stores an event; b's own
    // subscriber gets it, a's never does.
    let spy = Bus::connect(intruder.clone(), BusConfig::default())
        .await
        .expect("a's own bus connection");
    // Refused, and said so: the subscription's own check message never comes back.
    let refused = spy
        .subscribe_all_namespaces("tb.events.>", Filter::all())
        .await
        .expect_err("tenant a subscribed to tenant b's live bus");
    assert!(
        refused.to_string().contains("aether.tb.bus.interest"),
        "{refused}"
    );
    assert!(
        spy.durable("spy", "tb.events.counter.*", Filter::all())
            .await
            .is_err(),
        "tenant a made a durable subscription on tenant b's stream"
    );
    let mut raw_spy = raw.subscribe("aether.tb.>").await.expect("raw subscribe");
    assert_eq!(
        b.actor::<Counter>("x")
            .unwrap()
            .ask(CounterCmd::Add(4))
            .await
            .unwrap(),
        7
    );
    tokio::time::timeout(Duration::from_secs(5), b_events.next())
        .await
        .expect("tenant b sees its own event")
        .expect("an event");
    let leaked = tokio::time::timeout(Duration::from_millis(500), async {
        let m = raw_spy.next().await;
        format!("a message on {:?}", m.map(|m| m.subject))
    })
    .await;
    assert!(leaked.is_err(), "tenant a received tenant b's {leaked:?}");
    // Tenant b's counter saw only its own commands.
    assert_eq!(
        b.actor::<Counter>("x")
            .unwrap()
            .ask(CounterCmd::Get)
            .await
            .unwrap(),
        7
    );
    // Inside account A, the user limited to namespace tc cannot open ta's stream.
    let options = aether::store::JetStreamOptions {
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    assert!(
        aether::store::JetStreamStore::connect(creds("tc"), "ta", options)
            .await
            .is_err(),
        "a user limited to namespace tc opened ta's stream in the same account"
    );
    // The server logged that refusal: the check for violations above can see one.
    assert!(server.log().contains("Violation"), "no violation logged");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The hard case after a clean start: the secured server restarts under a running node. The
/// node reconnects with the same credentials by itself and serves the state it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reconnects_with_its_credentials_after_a_server_restart() {
    use aether::{AskOptions, ClusterConfig, CommandId, Runtime};
    use common::{Counter, CounterCmd, poll_until};

    let password = "pw-restart-secret";
    let mut server = NatsServer::start_with_config(&format!(
        "authorization {{ user: aether, password: \"{password}\" }}"
    ));
    let rt = Runtime::join_cluster(
        ClusterConfig::new(
            NatsConfig::new(server.url()).user_password("aether", password),
            "restart",
        )
        .node_id("node-1"),
        Runtime::builder().register::<Counter>(),
    )
    .await
    .expect("joins with the password");
    let counter = rt.actor::<Counter>("c").unwrap();
    assert_eq!(counter.ask(CounterCmd::Add(2)).await.unwrap(), 2);
    tokio::task::block_in_place(|| server.restart());
    // Served again, from the stored state, once the node is back on the restarted server.
    // A write (a resident actor answers reads from memory): retried with one command id, as
    // a user retries, so the attempts made while the node reconnects apply it at most once.
    let id = CommandId::random();
    poll_until(Duration::from_secs(30), "a write after the restart", || {
        let counter = counter.clone();
        async move {
            counter
                .ask_with(CounterCmd::Add(1), AskOptions::default().command_id(id))
                .await
                .is_ok()
        }
    })
    .await;
    assert_eq!(
        counter.ask(CounterCmd::Get).await.unwrap(),
        3,
        "applied once"
    );
    rt.shutdown().await.unwrap();
}

/// Two nodes whose users have the documented permissions answer 64 concurrent cross-node asks
/// per round, every one of them, also when the owner batches its answers (the batches go to
/// the asker's inbox under `aether.<ns>.reply`, which those permissions let a node publish to;
/// an `_INBOX` batch would be refused by `allow_responses`) and the asker its requests (on
/// `aether.<ns>.node.<node>.asks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_answers_pass_the_documented_permissions() {
    use common::{Counter, CounterCmd};
    use futures_util::StreamExt;

    let server = NatsServer::start_with_config(&format!(
        "accounts {{\n\
           TENANT: {{ jetstream: enabled, users: [\n\
             {{ user: tp, password: \"pw-tp-secret\", {} }},\n\
             {{ user: watcher, password: \"pw-watcher\" }}\n\
           ] }}\n\
         }}",
        documented_permissions("tp")
    ));
    let creds = || {
        NatsConfig::new(server.url())
            .user_password("tp", "pw-tp-secret")
            .connect_timeout(Duration::from_secs(2))
    };
    let a = counter_node(creds(), "tp", "tp-1").await;
    let b = counter_node(creds(), "tp", "tp-2").await;
    for rt in [&a, &b] {
        rt.cluster()
            .expect("a cluster node")
            .settled_with(2, Duration::from_secs(20))
            .await
            .expect("both nodes serve");
    }
    // An unrestricted user of the same account sees the batches go by.
    let watcher =
        async_nats::ConnectOptions::with_user_and_password("watcher".into(), "pw-watcher".into())
            .connect(server.url())
            .await
            .expect("the watcher connects");
    let mut batches = watcher
        .subscribe("aether.tp.reply.*.b")
        .await
        .expect("the watcher subscribes");
    let mut request_batches = watcher
        .subscribe("aether.tp.node.*.asks")
        .await
        .expect("the watcher subscribes");
    watcher.flush().await.expect("flushed");
    let cluster = a.cluster().expect("a cluster node");
    let remote: Vec<_> = (0..)
        .map(|i| format!("c{i}"))
        .filter(|id| cluster.locate::<Counter>(id).owner.as_deref() == Some("tp-2"))
        .take(64)
        .map(|id| a.actor::<Counter>(id).expect("a ref"))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut round = 0;
    let mut seen = 0;
    while seen == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch in {round} rounds"
        );
        round += 1;
        let answers =
            futures_util::future::join_all(remote.iter().map(|r| r.ask(CounterCmd::Add(1)))).await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.expect("every ask is answered"), round, "actor {i}");
        }
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(50), batches.next()).await
        {
            seen += 1;
        }
    }
    // The asks went to tp-2 in batches too, on its node subject: the server let tp-1 publish
    // them (a refused publish reaches no subscriber, the watcher included).
    let stats = a.stats();
    assert!(stats.remote_batched > 0, "no batched request: {stats:?}");
    let batch = tokio::time::timeout(Duration::from_secs(5), request_batches.next())
        .await
        .expect("a batch of requests went by")
        .expect("the watcher's subscription");
    assert_eq!(batch.subject.as_str(), "aether.tp.node.tp-2.asks");
    a.shutdown().await.expect("a stops");
    b.shutdown().await.expect("b stops");
}

/// A cluster node of namespace `ns` hosting the test `Counter`, connected with `nats`, with
/// short cluster timings.
async fn counter_node(nats: NatsConfig, ns: &str, id: impl Into<String>) -> aether::Runtime {
    let id = id.into();
    aether::Runtime::join_cluster(
        aether::ClusterConfig::new(nats, ns)
            .node_id(id.clone())
            .heartbeat(Duration::from_millis(200))
            .failure_timeout(Duration::from_secs(1))
            .lease(Duration::from_secs(1)),
        aether::Runtime::builder().register::<common::Counter>(),
    )
    .await
    .unwrap_or_else(|e| panic!("{id} of {ns} joins under its permissions: {e}"))
}

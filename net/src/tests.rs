//! Loopback tests of the transport: real sockets, real TLS.

use std::net::SocketAddr;

use distcc_rs_proto::message::SchedulerRequest;

use crate::framed::accept_stream;
use crate::payload::{digest_of, recv_compressed, recv_raw, send_compressed, send_raw};
use crate::*;

use std::sync::LazyLock;

use distcc_rs_proto::PeerRole;

use crate::pki::TestFarm;

static FARM: LazyLock<TestFarm> = LazyLock::new(TestFarm::new);

fn server(opts: &EndpointOptions) -> quinn::Endpoint {
    let (id, auth) = FARM.member(PeerRole::Node);
    bind_server("127.0.0.1:0".parse().unwrap(), &id, &auth, opts).unwrap()
}

fn client(peer: SocketAddr, opts: &EndpointOptions) -> quinn::Endpoint {
    let (id, auth) = FARM.member(PeerRole::Client);
    bind_client(peer, Some(&id), &auth, opts).unwrap()
}

#[tokio::test]
async fn messages_and_payloads_cross_a_real_connection() {
    let opts = EndpointOptions::default();
    let srv = server(&opts);
    let addr = srv.local_addr().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = digest_of(&data);

    let echo = tokio::spawn(async move {
        let conn = srv.accept().await.unwrap().await.unwrap();
        let (mut w, mut r) = accept_stream(&conn).await.unwrap();
        let req: SchedulerRequest = r.recv().await.unwrap();
        assert_eq!(req, SchedulerRequest::Status);
        let mut out = Vec::new();
        let got = recv_compressed(&mut r, &mut out, 10 << 20).await.unwrap();
        assert!(got.wire > 0 && got.wire < got.size / 10, "{got:?}");
        let (digest, size) = (got.digest, got.size);
        let mut raw = Vec::new();
        recv_raw(&mut r, &mut raw, 10 << 20).await.unwrap();
        assert_eq!(raw, out);
        w.send(&(digest, size)).await.unwrap();
        w.finish().unwrap();
        conn.closed().await;
        (r.bytes_received(), w.bytes_sent())
    });

    let cl = client(addr, &opts);
    let conn = connect(&cl, addr, PeerRole::Node, &opts).await.unwrap();
    let (mut w, mut r) = open_stream(&conn).await.unwrap();
    w.send(&SchedulerRequest::Status).await.unwrap();
    let (raw, wire) = send_compressed(&mut w, &data[..], 3).await.unwrap();
    assert_eq!(raw, data.len() as u64);
    assert!(
        wire < raw / 10,
        "periodic data compresses well: {wire} of {raw}"
    );
    send_raw(&mut w, &data[..]).await.unwrap();
    let (digest, size): (distcc_rs_proto::Digest, u64) = r.recv().await.unwrap();
    assert_eq!((digest, size), (expected, data.len() as u64));
    assert!(
        r.recv_opt::<u8>().await.unwrap().is_none(),
        "clean end of stream"
    );
    conn.close(0u32.into(), b"done");
    // Both ends count the same bytes: headers, messages, chunks, with the
    // raw copy of the data adding at least its own length.
    let (echo_received, echo_sent) = echo.await.unwrap();
    assert_eq!(echo_received, w.bytes_sent());
    assert_eq!(echo_sent, r.bytes_received());
    assert!(w.bytes_sent() > raw + wire, "{}", w.bytes_sent());
    assert!(r.bytes_received() > 0);
}

#[tokio::test]
async fn oversized_payload_is_refused() {
    let opts = EndpointOptions::default();
    let srv = server(&opts);
    let addr = srv.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let conn = srv.accept().await.unwrap().await.unwrap();
        let (_w, mut r) = accept_stream(&conn).await.unwrap();
        let err = recv_compressed(&mut r, std::io::sink(), 1000)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NetError::PayloadTooLarge { limit: 1000 }),
            "{err}"
        );
    });
    let cl = client(addr, &opts);
    let conn = connect(&cl, addr, PeerRole::Node, &opts).await.unwrap();
    let (mut w, _r) = open_stream(&conn).await.unwrap();
    // A zstd bomb in miniature: 1 MiB of zeros compresses to a few bytes.
    let _ = send_compressed(&mut w, &vec![0u8; 1 << 20][..], 3).await;
    receiver.await.unwrap();
}

#[tokio::test]
async fn version_mismatch_is_named_on_both_sides() {
    let srv_opts = EndpointOptions::default();
    let srv = server(&srv_opts);
    let addr = srv.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let incoming = srv.accept().await.unwrap();
        let peer = incoming.remote_address();
        let err = incoming.await.unwrap_err();
        endpoint::explain(err, peer, srv_opts.protocol_version)
    });
    let cl_opts = EndpointOptions {
        protocol_version: 999,
        ..EndpointOptions::default()
    };
    let cl = client(addr, &cl_opts);
    let err = connect(&cl, addr, PeerRole::Node, &cl_opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::VersionMismatch { ours: 999, .. }),
        "client saw: {err}"
    );
    assert!(err.to_string().contains("protocol version mismatch"));
    let err = server_side.await.unwrap();
    assert!(
        matches!(err, NetError::VersionMismatch { ours, .. } if ours == distcc_rs_proto::PROTOCOL_VERSION),
        "server saw: {err}"
    );
}

#[tokio::test]
async fn connecting_to_nothing_times_out_with_a_clear_error() {
    let opts = EndpointOptions {
        connect_timeout: std::time::Duration::from_millis(300),
        ..EndpointOptions::default()
    };
    // Reserve a port, then free it so nothing listens there.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cl = client(addr, &opts);
    let err = connect(&cl, addr, PeerRole::Node, &opts).await.unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
}

mod authentication {
    //! Who may connect to whom: the handshake half of the farm's access
    //! control. Each test checks the error on both sides, because an admin
    //! reads the daemon's log and a user reads the client's.

    use super::*;
    use crate::pki::FarmCa;
    use crate::tls::{FarmTrust, Revocations, peer_certificate};

    /// A daemon with `role`'s certificate of `farm`, and the error (if any)
    /// of the first incoming handshake, explained as the daemons do.
    fn daemon(
        farm: &TestFarm,
        role: PeerRole,
        revoked: Revocations,
        allow_anonymous: bool,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<Option<crate::PeerCertificate>, NetError>>,
    ) {
        let opts = EndpointOptions::default();
        let (id, _) = farm.member(role);
        let auth = PeerAuth::Farm(FarmTrust {
            ca: farm.ca.cert_der().clone(),
            revoked,
            allow_anonymous,
        });
        let ep = bind_server("127.0.0.1:0".parse().unwrap(), &id, &auth, &opts).unwrap();
        let addr = ep.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let incoming = ep.accept().await.unwrap();
            let peer = incoming.remote_address();
            let result = match incoming.await {
                Ok(conn) => {
                    let cert = peer_certificate(&conn);
                    // Serve until the client is done with the connection.
                    conn.closed().await;
                    Ok(cert)
                }
                Err(e) => Err(endpoint::explain(e, peer, PROTOCOL)),
            };
            ep.close(0u32.into(), b"");
            result
        });
        (addr, task)
    }

    const PROTOCOL: u32 = distcc_rs_proto::PROTOCOL_VERSION;

    async fn dial(
        addr: SocketAddr,
        identity: Option<&Identity>,
        auth: &PeerAuth,
        expect: PeerRole,
    ) -> Result<quinn::Connection, NetError> {
        let opts = EndpointOptions::default();
        let ep = bind_client(addr, identity, auth, &opts).unwrap();
        let conn = connect(&ep, addr, expect, &opts).await?;
        // A client learns that the server refused its certificate only
        // when it next hears from the server: TLS 1.3 lets the client
        // finish first.
        let (mut w, _r) = open_stream(&conn).await?;
        w.send(&SchedulerRequest::Status).await?;
        match tokio::time::timeout(std::time::Duration::from_millis(500), conn.closed()).await {
            Ok(e) => Err(endpoint::explain(e, addr, PROTOCOL)),
            Err(_) => Ok(conn),
        }
    }

    #[tokio::test]
    async fn members_see_each_others_roles() {
        let farm = TestFarm::new();
        let (addr, server) = daemon(&farm, PeerRole::Node, Revocations::default(), false);
        let (id, auth) = farm.member(PeerRole::Client);
        let conn = dial(addr, Some(&id), &auth, PeerRole::Node).await.unwrap();
        let seen = peer_certificate(&conn).unwrap();
        assert_eq!(seen.role, Some(PeerRole::Node));
        conn.close(0u32.into(), b"");
        let theirs = server.await.unwrap().unwrap().unwrap();
        assert_eq!(theirs.role, Some(PeerRole::Client));
        assert_eq!(
            theirs.fingerprint,
            crate::pki::fingerprint(&id.cert_chain[0])
        );
    }

    #[tokio::test]
    async fn a_peer_without_a_certificate_cannot_connect() {
        let farm = TestFarm::new();
        let (addr, server) = daemon(&farm, PeerRole::Node, Revocations::default(), false);
        let (_, auth) = farm.member(PeerRole::Client);
        let err = dial(addr, None, &auth, PeerRole::Node).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, NetError::RefusedUs { alert: 116, .. }),
            "{text}"
        );
        assert!(text.contains("requires a farm certificate"), "{text}");
        let theirs = server.await.unwrap().unwrap_err();
        assert!(matches!(theirs, NetError::NotTrusted { .. }), "{theirs}");
        assert!(
            theirs.to_string().contains("not a trusted member"),
            "{theirs}"
        );
    }

    #[tokio::test]
    async fn a_certificate_of_another_farm_cannot_connect() {
        let farm = TestFarm::new();
        let other = TestFarm::new();
        let (addr, server) = daemon(&farm, PeerRole::Node, Revocations::default(), false);
        // Our certificate is foreign to the server...
        let (id, _) = other.member(PeerRole::Client);
        let (_, auth) = farm.member(PeerRole::Client);
        let err = dial(addr, Some(&id), &auth, PeerRole::Node)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::RefusedUs { .. }), "{err}");
        assert!(err.to_string().contains("not from this farm's CA"), "{err}");
        assert!(matches!(
            server.await.unwrap().unwrap_err(),
            NetError::NotTrusted { .. }
        ));
        // ...and the server's is foreign to a member of the other farm.
        let (addr, _server) = daemon(&farm, PeerRole::Node, Revocations::default(), false);
        let (id, auth) = other.member(PeerRole::Client);
        let err = dial(addr, Some(&id), &auth, PeerRole::Node)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::NotTrusted { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused() {
        let farm = TestFarm::new();
        let (id, auth) = farm.member(PeerRole::Client);
        let revoked = Revocations::default();
        revoked.replace([crate::pki::fingerprint(&id.cert_chain[0])].into());
        let (addr, server) = daemon(&farm, PeerRole::Scheduler, revoked, true);
        let err = dial(addr, Some(&id), &auth, PeerRole::Scheduler)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NetError::RefusedUs { alert: 44, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("revoked"), "{err}");
        let theirs = server.await.unwrap().unwrap_err();
        assert!(theirs.to_string().contains("Revoked"), "{theirs}");
    }

    /// A member that connected before its revocation cannot come back on
    /// the same endpoint (which would otherwise resume its TLS session and
    /// skip the certificate check).
    #[tokio::test]
    async fn a_revoked_certificate_cannot_resume_its_session() {
        let farm = TestFarm::new();
        let (id, auth) = farm.member(PeerRole::Client);
        let revoked = Revocations::default();
        let opts = EndpointOptions::default();
        let (server_id, _) = farm.member(PeerRole::Scheduler);
        let server_auth = PeerAuth::Farm(FarmTrust {
            ca: farm.ca.cert_der().clone(),
            revoked: revoked.clone(),
            allow_anonymous: true,
        });
        let server = bind_server(
            "127.0.0.1:0".parse().unwrap(),
            &server_id,
            &server_auth,
            &opts,
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        // Answer one request, so the client has heard
                        // everything the handshake sends (session tickets
                        // included) before it closes.
                        if let Some((mut w, mut r)) = accept_stream(&conn).await {
                            let _ = r.recv::<SchedulerRequest>().await;
                            let _ = w.send(&SchedulerRequest::Status).await;
                            let _ = w.finish();
                        }
                        conn.closed().await;
                    }
                });
            }
        });
        let client = bind_client(addr, Some(&id), &auth, &opts).unwrap();
        let first = connect(&client, addr, PeerRole::Scheduler, &opts)
            .await
            .unwrap();
        let (mut w, mut r) = open_stream(&first).await.unwrap();
        w.send(&SchedulerRequest::Status).await.unwrap();
        r.recv::<SchedulerRequest>().await.unwrap();
        first.close(0u32.into(), b"");

        revoked.replace([crate::pki::fingerprint(&id.cert_chain[0])].into());
        let second = connect(&client, addr, PeerRole::Scheduler, &opts).await;
        let err = match second {
            Err(e) => e,
            Ok(conn) => {
                let (mut w, _r) = open_stream(&conn).await.unwrap();
                let _ = w.send(&SchedulerRequest::Status).await;
                let closed = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed())
                    .await
                    .expect("the revoked member's resumed connection was accepted");
                endpoint::explain(closed, addr, PROTOCOL)
            }
        };
        assert!(
            matches!(err, NetError::RefusedUs { alert: 44, .. }),
            "{err}"
        );
        accepting.abort();
    }

    #[tokio::test]
    async fn a_server_of_the_wrong_role_is_not_trusted() {
        let farm = TestFarm::new();
        // A client certificate behind a daemon's address is not a node.
        let (addr, _server) = daemon(&farm, PeerRole::Client, Revocations::default(), false);
        let (id, auth) = farm.member(PeerRole::Client);
        let err = dial(addr, Some(&id), &auth, PeerRole::Node)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::NotTrusted { .. }), "{err}");
    }

    #[tokio::test]
    async fn enrolling_peers_trust_only_the_pinned_ca() {
        let farm = TestFarm::new();
        let (addr, server) = daemon(&farm, PeerRole::Scheduler, Revocations::default(), true);
        let pinned = PeerAuth::Enroll { pin: farm.ca.pin() };
        let conn = dial(addr, None, &pinned, PeerRole::Scheduler)
            .await
            .unwrap();
        conn.close(0u32.into(), b"");
        // The scheduler sees a connection without a certificate.
        assert_eq!(server.await.unwrap().unwrap(), None);

        let (addr, _server) = daemon(&farm, PeerRole::Scheduler, Revocations::default(), true);
        let wrong = PeerAuth::Enroll {
            pin: FarmCa::generate().unwrap().pin(),
        };
        let err = dial(addr, None, &wrong, PeerRole::Scheduler)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::NotTrusted { .. }), "{err}");
    }
}

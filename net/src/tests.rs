//! Loopback tests of the transport: real sockets, real TLS.

use std::net::SocketAddr;

use distcc_rs_proto::message::SchedulerRequest;

use crate::framed::accept_stream;
use crate::payload::{digest_of, recv_compressed, recv_raw, send_compressed, send_raw};
use crate::*;

fn server(opts: &EndpointOptions) -> quinn::Endpoint {
    let id = Identity::self_signed("test").unwrap();
    bind_server(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &PeerAuth::Unauthenticated,
        opts,
    )
    .unwrap()
}

fn client(peer: SocketAddr, opts: &EndpointOptions) -> quinn::Endpoint {
    bind_client(peer, None, &PeerAuth::Unauthenticated, opts).unwrap()
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
    let conn = connect(&cl, addr, &opts).await.unwrap();
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
    let conn = connect(&cl, addr, &opts).await.unwrap();
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
    let err = connect(&cl, addr, &cl_opts).await.unwrap_err();
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
    let err = connect(&cl, addr, &opts).await.unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
}

//! Who may ask the node for what (pure).
//!
//! Every peer of the node proved in the TLS handshake that it holds a
//! certificate of the farm CA; the role that certificate names decides what
//! it may ask for. Only the scheduler adopts the node, and only a client
//! submits jobs, each with a ticket the scheduler issued to that client's
//! own certificate, so a ticket seen by anyone else is worthless.

use distcc_rs_net::PeerCertificate;
use distcc_rs_proto::{PeerRole, Ticket};

/// Whether the peer holding `peer` may submit the job `ticket` allows. The
/// reason, for the peer and the node's log, when it may not. The ticket's
/// signature is checked separately ([`crate::job::check_ticket`]).
pub fn authorize_job(peer: Option<PeerCertificate>, ticket: &Ticket) -> Result<(), String> {
    match peer {
        None => Err("the peer presented no certificate".into()),
        Some(PeerCertificate {
            role: Some(PeerRole::Client),
            fingerprint,
        }) => {
            if fingerprint == ticket.client {
                Ok(())
            } else {
                Err("the ticket was issued to another client certificate".into())
            }
        }
        Some(PeerCertificate {
            role: Some(role), ..
        }) => Err(format!(
            "only clients submit jobs; this peer's certificate is for a {role}"
        )),
        Some(PeerCertificate { role: None, .. }) => {
            Err("only clients submit jobs; this peer's certificate names no role".into())
        }
    }
}

/// Whether the peer holding `peer` may adopt the node.
pub fn authorize_adopt(peer: Option<PeerCertificate>) -> Result<(), String> {
    match peer {
        None => Err("the peer presented no certificate".into()),
        Some(PeerCertificate {
            role: Some(PeerRole::Scheduler),
            ..
        }) => Ok(()),
        Some(PeerCertificate {
            role: Some(role), ..
        }) => Err(format!(
            "only the scheduler adopts nodes; this peer's certificate is for a {role}"
        )),
        Some(PeerCertificate { role: None, .. }) => {
            Err("only the scheduler adopts nodes; this peer's certificate names no role".into())
        }
    }
}

/// The role a peer's certificate names, for logs.
pub fn role_name(peer: Option<PeerCertificate>) -> String {
    match peer {
        None => "no certificate".into(),
        Some(PeerCertificate { role: None, .. }) => "none".into(),
        Some(PeerCertificate {
            role: Some(role), ..
        }) => role.to_string(),
    }
}

/// The start of a peer's certificate fingerprint, for logs.
pub fn fingerprint_short(peer: Option<PeerCertificate>) -> String {
    peer.map_or_else(|| "none".into(), |p| p.fingerprint.short())
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_proto::{CertFingerprint, Digest, JobId, NodeId, ToolchainId};

    fn ticket(client: CertFingerprint) -> Ticket {
        Ticket {
            job: JobId(1),
            node: NodeId(2),
            toolchain: ToolchainId(Digest([3; 32])),
            client,
            mac: [0; 32],
        }
    }

    fn peer(role: Option<PeerRole>, fingerprint: u8) -> Option<PeerCertificate> {
        Some(PeerCertificate {
            role,
            fingerprint: CertFingerprint([fingerprint; 32]),
        })
    }

    #[test]
    fn only_the_client_a_ticket_names_submits_its_job() {
        let t = ticket(CertFingerprint([1; 32]));
        assert_eq!(authorize_job(peer(Some(PeerRole::Client), 1), &t), Ok(()));
        assert_eq!(
            authorize_job(peer(Some(PeerRole::Client), 2), &t),
            Err("the ticket was issued to another client certificate".into())
        );
        // A node or the scheduler holding a certificate with the ticket's
        // fingerprint is still not a client.
        let err = authorize_job(peer(Some(PeerRole::Node), 1), &t).unwrap_err();
        assert_eq!(
            err,
            "only clients submit jobs; this peer's certificate is for a node"
        );
        let err = authorize_job(peer(Some(PeerRole::Scheduler), 1), &t).unwrap_err();
        assert!(err.contains("for a scheduler"), "{err}");
        let err = authorize_job(peer(None, 1), &t).unwrap_err();
        assert!(err.contains("names no role"), "{err}");
        assert!(authorize_job(None, &t).is_err());
    }

    #[test]
    fn only_the_scheduler_adopts() {
        assert_eq!(authorize_adopt(peer(Some(PeerRole::Scheduler), 1)), Ok(()));
        for role in [PeerRole::Client, PeerRole::Node] {
            let err = authorize_adopt(peer(Some(role), 1)).unwrap_err();
            assert!(err.starts_with("only the scheduler adopts nodes"), "{err}");
            assert!(err.contains(&format!("for a {role}")), "{err}");
        }
        assert!(authorize_adopt(peer(None, 1)).is_err());
        assert!(authorize_adopt(None).is_err());
    }

    #[test]
    fn logs_name_the_role_and_the_fingerprint() {
        assert_eq!(role_name(peer(Some(PeerRole::Client), 0xab)), "client");
        assert_eq!(role_name(peer(None, 0xab)), "none");
        assert_eq!(role_name(None), "no certificate");
        assert_eq!(fingerprint_short(peer(None, 0xab)), "abababababab");
        assert_eq!(fingerprint_short(None), "none");
    }
}

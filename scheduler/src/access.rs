//! Who may ask the scheduler for what. A pure function of the peer's
//! certificate role and the request, so the whole policy is one table,
//! tested with data.
//!
//! * Without a certificate, a peer may only enroll.
//! * Nodes register, fetch toolchain bundles, and read the farm's status
//!   (prefetching uses it).
//! * Clients allocate jobs, release them, upload, list and remove
//!   toolchains, and read the status.
//! * Enrolling again with a certificate is allowed (a member renewing its
//!   own), since it needs the join token anyway.
//! * Nobody acts as the scheduler towards the scheduler.

use distcc_rs_proto::PeerRole;
use distcc_rs_proto::message::SchedulerRequest;

/// Why a request was refused: the words the peer and the log get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// A request's name for logs and refusals.
pub fn request_name(request: &SchedulerRequest) -> &'static str {
    match request {
        SchedulerRequest::RegisterNode(_) => "node registration",
        SchedulerRequest::Allocate(_) => "allocation",
        SchedulerRequest::UploadToolchain { .. } => "toolchain upload",
        SchedulerRequest::FetchToolchain(_) => "toolchain fetch",
        SchedulerRequest::Status => "status request",
        SchedulerRequest::Release { .. } => "release",
        SchedulerRequest::ListToolchains => "toolchain listing",
        SchedulerRequest::RemoveToolchain { .. } => "toolchain removal",
        SchedulerRequest::Enroll(_) => "enrollment",
    }
}

/// Whether a peer whose certificate has `role` (`None`: no certificate, or
/// one that names no role) may make `request`.
pub fn authorize(role: Option<PeerRole>, request: &SchedulerRequest) -> Result<(), Denied> {
    use PeerRole::{Client, Node};
    let allowed: &[PeerRole] = match request {
        SchedulerRequest::Enroll(_) => return Ok(()),
        SchedulerRequest::RegisterNode(_) | SchedulerRequest::FetchToolchain(_) => &[Node],
        SchedulerRequest::Allocate(_)
        | SchedulerRequest::Release { .. }
        | SchedulerRequest::UploadToolchain { .. }
        | SchedulerRequest::ListToolchains
        | SchedulerRequest::RemoveToolchain { .. } => &[Client],
        SchedulerRequest::Status => &[Client, Node],
    };
    let name = request_name(request);
    let what = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {name}")
    } else {
        format!("a {name}")
    };
    match role {
        Some(role) if allowed.contains(&role) => Ok(()),
        Some(role) => Err(Denied(format!(
            "{what} needs a {} certificate and this peer's is a {role} certificate",
            names(allowed)
        ))),
        None => Err(Denied(format!(
            "{what} needs a farm certificate and this peer presented none; enroll first with \
             the farm's join token"
        ))),
    }
}

fn names(roles: &[PeerRole]) -> String {
    roles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_proto::auth::EnrollRequest;
    use distcc_rs_proto::message::{AllocateRequest, NodeRegistration};
    use distcc_rs_proto::{Digest, JobId, NodeId, ToolchainId};

    fn every_request() -> Vec<SchedulerRequest> {
        let tc = ToolchainId(Digest([1; 32]));
        vec![
            SchedulerRequest::RegisterNode(NodeRegistration {
                node: NodeId(1),
                farm: "f".into(),
                name: "n".into(),
                job_port: 1,
                advertise: None,
                slots: 1,
                toolchains: vec![],
            }),
            SchedulerRequest::Allocate(AllocateRequest {
                toolchain: tc,
                crate_name: "c".into(),
                client: "h:1".into(),
                build: "b".into(),
                exclude: vec![],
            }),
            SchedulerRequest::UploadToolchain {
                id: tc,
                compressed_size: 1,
            },
            SchedulerRequest::FetchToolchain(tc),
            SchedulerRequest::Status,
            SchedulerRequest::Release { job: JobId(1) },
            SchedulerRequest::ListToolchains,
            SchedulerRequest::RemoveToolchain {
                id: tc,
                force: false,
            },
            SchedulerRequest::Enroll(EnrollRequest {
                secret: [0; 16],
                role: PeerRole::Client,
                name: "c".into(),
                public_key: vec![],
            }),
        ]
    }

    /// The whole policy as a table: which of (none, scheduler, node,
    /// client) may make each request.
    #[test]
    fn the_policy_table() {
        let expected: &[(&str, [bool; 4])] = &[
            ("node registration", [false, false, true, false]),
            ("allocation", [false, false, false, true]),
            ("toolchain upload", [false, false, false, true]),
            ("toolchain fetch", [false, false, true, false]),
            ("status request", [false, false, true, true]),
            ("release", [false, false, false, true]),
            ("toolchain listing", [false, false, false, true]),
            ("toolchain removal", [false, false, false, true]),
            ("enrollment", [true, true, true, true]),
        ];
        let roles = [
            None,
            Some(PeerRole::Scheduler),
            Some(PeerRole::Node),
            Some(PeerRole::Client),
        ];
        let requests = every_request();
        assert_eq!(requests.len(), expected.len());
        for (request, (name, allowed)) in requests.iter().zip(expected) {
            assert_eq!(request_name(request), *name);
            for (role, allow) in roles.iter().zip(allowed) {
                assert_eq!(
                    authorize(*role, request).is_ok(),
                    *allow,
                    "{name} by {role:?}"
                );
            }
        }
    }

    #[test]
    fn refusals_name_both_roles() {
        let register = &every_request()[0];
        let err = authorize(Some(PeerRole::Client), register).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a node registration needs a node certificate and this peer's is a client certificate"
        );
        let allocate = &every_request()[1];
        let err = authorize(Some(PeerRole::Node), allocate).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("an allocation needs a client certificate"),
            "{err}"
        );
        let err = authorize(None, &SchedulerRequest::Status).unwrap_err();
        assert!(err.to_string().contains("presented none"), "{err}");
    }
}

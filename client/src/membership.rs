//! The client's membership of the farm: its credentials (a certificate the
//! scheduler issued, its private key and the farm CA's certificate, kept in
//! the identity directory), enrolling with the join token to get them, and
//! `distcc-rs join`.
//!
//! The wrapper, `status`, `monitor` and `distcc-rs-pack` all use the same
//! credentials. The first of them to run with a join token configured and no
//! certificate saved enrolls; concurrent wrappers wait for it on a lock
//! (see [`distcc_rs_net::credentials`]) and then use what it saved.

use std::net::SocketAddr;
use std::path::PathBuf;

use distcc_rs_net::NetError;
use distcc_rs_net::config_file::client::member_name;
use distcc_rs_net::credentials::{Credentials, CredentialsError, Enrollment, enroll};
use distcc_rs_proto::{JoinToken, PROTOCOL_VERSION, PeerRole};

use crate::config::ClientConfig;

/// Why the client has no credentials to use.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A setting is unusable: no identity directory, or a join token that
    /// is not one (its message never holds the secret).
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

impl MembershipError {
    /// Whether the client simply has not enrolled: no certificate and no
    /// token. The message says what to do.
    pub fn is_not_enrolled(&self) -> bool {
        matches!(
            self,
            MembershipError::Credentials(CredentialsError::NotEnrolled { .. })
        )
    }
}

/// Where the client's credentials are and how to get them.
#[derive(Debug, Clone)]
pub struct Membership {
    pub dir: PathBuf,
    /// The configured join token, if it is one.
    pub token: Option<JoinToken>,
    /// Why the configured join token is not one.
    pub token_problem: Option<String>,
    /// The name to enroll under, `user@host`.
    pub name: String,
}

impl Membership {
    /// The membership the settings describe. Fails only without an identity
    /// directory; a malformed token is kept as [`Membership::token_problem`]
    /// so that saved credentials still work.
    pub fn from_config(config: &ClientConfig) -> Result<Membership, MembershipError> {
        let dir = config
            .identity_dir
            .clone()
            .map_err(MembershipError::Setting)?;
        let (token, token_problem) = match &config.join_token {
            None => (None, None),
            Some(Ok(token)) => (Some(*token), None),
            Some(Err(problem)) => (None, Some(problem.clone())),
        };
        Ok(Membership {
            dir,
            token,
            token_problem,
            name: member_name(&|k| std::env::var(k).ok()),
        })
    }

    fn enrollment(&self) -> Enrollment<'_> {
        Enrollment {
            dir: &self.dir,
            role: PeerRole::Client,
            name: &self.name,
            token: self.token.as_ref(),
        }
    }

    /// The saved credentials if they are a client's (and, with a token, of
    /// the token's farm). `Ok(None)` when enrolling is needed and possible;
    /// an error when it is needed and there is no usable token.
    pub fn saved(&self) -> Result<Option<Credentials>, MembershipError> {
        if let Some(saved) = self.enrollment().saved()? {
            return Ok(Some(saved));
        }
        if let Some(problem) = &self.token_problem {
            return Err(MembershipError::Setting(format!(
                "not enrolled in the farm (no certificate in {}), and the join token given is \
                 unusable: {problem}",
                self.dir.display()
            )));
        }
        if self.token.is_none() {
            return Err(CredentialsError::NotEnrolled {
                dir: self.dir.clone(),
            }
            .into());
        }
        Ok(None)
    }

    /// The saved credentials, or new ones from the scheduler at `scheduler`
    /// when a token is configured.
    pub async fn load_or_enroll(
        &self,
        scheduler: SocketAddr,
    ) -> Result<Credentials, MembershipError> {
        if let Some(saved) = self.saved()? {
            return Ok(saved);
        }
        Ok(self
            .enrollment()
            .load_or_enroll(|| async move { Some(scheduler) })
            .await?)
    }

    /// The saved credentials, or new ones from the scheduler `find` returns,
    /// outside an async runtime: the saved credentials are read without one,
    /// and one is started only to enroll. `find` is called only when this
    /// process enrolls (after it got the enrollment lock and found that no
    /// other process enrolled meanwhile).
    pub fn load_or_enroll_blocking<F, Fut>(&self, find: F) -> Result<Credentials, MembershipError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<SocketAddr>>,
    {
        if let Some(saved) = self.saved()? {
            return Ok(saved);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                MembershipError::Setting(format!("cannot start the async runtime: {e}"))
            })?;
        Ok(runtime.block_on(self.enrollment().load_or_enroll(find))?)
    }
}

/// The reason a peer gave when it closed `conn`, if it closed it over our
/// credentials or our role: TLS 1.3 lets the client finish its handshake
/// first, so a scheduler or node that refuses our certificate is heard from
/// only at the next request on the connection, as a failed stream.
pub fn refusal(conn: &quinn::Connection, peer: SocketAddr) -> Option<NetError> {
    let reason = conn.close_reason()?;
    let explained = distcc_rs_net::endpoint::explain(reason, peer, PROTOCOL_VERSION);
    is_refusal(&explained).then_some(explained)
}

/// Whether an error means the farm does not admit us (or we do not trust
/// the peer): a revoked or foreign certificate, none at all, a peer that is
/// not of this farm, or a request our role may not make.
pub fn is_refusal(e: &NetError) -> bool {
    matches!(
        e,
        NetError::RefusedUs { .. } | NetError::NotTrusted { .. } | NetError::Refused { .. }
    )
}

/// What `distcc-rs join` did.
#[derive(Debug)]
pub enum Joined {
    /// Credentials of the token's farm were saved already.
    Already {
        credentials: Credentials,
        dir: PathBuf,
    },
    /// Enrolled now.
    Enrolled {
        credentials: Credentials,
        dir: PathBuf,
        name: String,
        scheduler: SocketAddr,
        /// Whether credentials of another farm (or another role) were
        /// replaced.
        replaced: bool,
    },
}

/// Parses a join token given on the command line; `-` reads it from stdin
/// (so it stays out of shell history and the process list).
pub fn read_token(text: &str) -> anyhow::Result<JoinToken> {
    let text = if text == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| anyhow::anyhow!("cannot read the join token from stdin: {e}"))?;
        line
    } else {
        text.to_owned()
    };
    Ok(text.parse::<JoinToken>()?)
}

/// `distcc-rs join`: enrolls as a client of the farm `token` names with the
/// scheduler `find` returns, unless credentials of that farm are saved
/// already (`force` enrolls again anyway). `find` is called only when
/// enrolling.
pub fn join(
    config: &ClientConfig,
    token: &JoinToken,
    force: bool,
    find: impl FnOnce() -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<Joined> {
    let membership = Membership {
        token: Some(*token),
        token_problem: None,
        ..Membership::from_config(config)?
    };
    let previous = Credentials::load(&membership.dir);
    if !force && let Some(credentials) = membership.enrollment().saved()? {
        return Ok(Joined::Already {
            credentials,
            dir: membership.dir,
        });
    }
    // Damaged files are replaced: that is what enrolling again is for.
    let replaced = matches!(previous, Ok(Some(_)) | Err(_));
    let scheduler = find()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let credentials =
        runtime.block_on(enroll(scheduler, token, PeerRole::Client, &membership.name))?;
    credentials.save(&membership.dir)?;
    Ok(Joined::Enrolled {
        credentials,
        dir: membership.dir,
        name: membership.name,
        scheduler,
        replaced,
    })
}

/// What `distcc-rs join` prints.
pub fn render_joined(joined: &Joined) -> String {
    match joined {
        Joined::Already { credentials, dir } => format!(
            "already enrolled in this farm as a client: certificate {} in {}; nothing to do \
             (--force enrolls again)\n",
            credentials.fingerprint().short(),
            dir.display()
        ),
        Joined::Enrolled {
            credentials,
            dir,
            name,
            scheduler,
            replaced,
        } => {
            let mut out = format!(
                "enrolled with the scheduler at {scheduler} as client {name:?}\n\
                 certificate {}\n\
                 saved in {}\n",
                credentials.fingerprint().short(),
                dir.display()
            );
            if *replaced {
                out.push_str("(the credentials saved there before were replaced)\n");
            }
            out
        }
    }
}

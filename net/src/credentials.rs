//! A farm member's credentials: its certificate, its private key and the
//! farm CA's certificate, kept in a directory of its own; and enrollment,
//! which gets them from the scheduler in exchange for the join token.
//!
//! Files (PEM, so that `openssl x509 -in member.crt -text` works):
//!
//! * `member.key`: the private key, mode 0600, made here and never sent;
//! * `member.crt`: the certificate the scheduler issued;
//! * `ca.crt`: the farm CA's certificate, the only trust anchor.
//!
//! Each file is written to a temporary name and renamed, the certificate
//! last, so a directory never holds a certificate without its key.
//! Concurrent enrollments (a dozen compiler wrappers started at once) are
//! serialised by an exclusive lock on `enroll.lock`; whoever gets the lock
//! second finds the credentials the first one saved.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use distcc_rs_proto::auth::{EnrollRefusal, EnrollRequest, EnrollResponse};
use distcc_rs_proto::message::SchedulerRequest;
use distcc_rs_proto::{CertFingerprint, JoinToken, PeerRole};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::endpoint::{EndpointOptions, bind_client, connect};
use crate::pki::{self, MemberKey, pem_encode};
use crate::tls::{FarmTrust, Identity, PeerAuth};
use crate::{NetError, open_stream};

const KEY_FILE: &str = "member.key";
const CERT_FILE: &str = "member.crt";
const CA_FILE: &str = "ca.crt";
const LOCK_FILE: &str = "enroll.lock";

/// Why credentials could not be loaded, saved or obtained.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged: {detail}; delete the directory and enroll again", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "not enrolled in the farm: no certificate in {} and no join token given (ask the farm's \
         admin for `distcc-rs-scheduler token`, then run `distcc-rs join TOKEN` or set \
         DISTCC_RS_JOIN_TOKEN)",
        dir.display()
    )]
    NotEnrolled { dir: PathBuf },
    #[error("cannot reach the scheduler at {scheduler} to enroll: {source}")]
    Unreachable {
        scheduler: SocketAddr,
        source: NetError,
    },
    #[error("the scheduler at {scheduler} refused the enrollment: {refusal}")]
    Refused {
        scheduler: SocketAddr,
        refusal: EnrollRefusal,
    },
    #[error(
        "the scheduler at {scheduler} answered the enrollment with a bad certificate: {detail}"
    )]
    BadAnswer {
        scheduler: SocketAddr,
        detail: String,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// A member's certificate, key and farm CA.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca: CertificateDer<'static>,
    pub identity: Identity,
}

impl Credentials {
    /// The certificate's role, if it names one.
    pub fn role(&self) -> Option<PeerRole> {
        pki::role_of(&self.identity.cert_chain[0])
    }

    /// The member certificate's fingerprint.
    pub fn fingerprint(&self) -> CertFingerprint {
        pki::fingerprint(&self.identity.cert_chain[0])
    }

    /// What a member trusts: this farm's CA.
    pub fn auth(&self) -> PeerAuth {
        PeerAuth::Farm(FarmTrust::new(self.ca.clone()))
    }

    /// Whether these credentials belong to the farm a token names.
    pub fn matches(&self, token: &JoinToken) -> bool {
        pki::pin_of(&self.ca) == token.ca_pin
    }

    /// Reads the credentials saved in `dir`; `None` if there are none.
    pub fn load(dir: &Path) -> Result<Option<Self>, CredentialsError> {
        let cert_path = dir.join(CERT_FILE);
        let cert_pem = match fs::read(&cert_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CredentialsError::Io {
                    action: "read",
                    path: cert_path,
                    source,
                });
            }
        };
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).map_err(|source| CredentialsError::Io {
                action: "read",
                path,
                source,
            })
        };
        let damaged = |name: &str, detail: String| CredentialsError::Damaged {
            path: dir.join(name),
            detail,
        };
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| damaged(CERT_FILE, e.to_string()))?;
        let ca = CertificateDer::from_pem_slice(&read(CA_FILE)?)
            .map_err(|e| damaged(CA_FILE, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(KEY_FILE)?)
            .map_err(|e| damaged(KEY_FILE, e.to_string()))?;
        Ok(Some(Credentials {
            ca,
            identity: Identity {
                cert_chain: vec![cert],
                key,
            },
        }))
    }

    /// Saves the credentials in `dir` (created with mode 0700), the key with
    /// mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), CredentialsError> {
        create_private_dir(dir)?;
        write_atomic(
            dir,
            KEY_FILE,
            pem_encode("PRIVATE KEY", self.identity.key.secret_der()).as_bytes(),
        )?;
        write_atomic(dir, CA_FILE, pem_encode("CERTIFICATE", &self.ca).as_bytes())?;
        write_atomic(
            dir,
            CERT_FILE,
            pem_encode("CERTIFICATE", &self.identity.cert_chain[0]).as_bytes(),
        )?;
        Ok(())
    }
}

/// Creates `dir` and its parents, the last with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), CredentialsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CredentialsError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })
}

/// Writes `dir/name` through a temporary file with mode 0600 and a rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CredentialsError> {
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let path = dir.join(name);
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| CredentialsError::Io {
            action,
            path,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename into place", &path))
}

/// Asks the scheduler at `scheduler` for a certificate of `role`.
pub async fn enroll(
    scheduler: SocketAddr,
    token: &JoinToken,
    role: PeerRole,
    name: &str,
) -> Result<Credentials, CredentialsError> {
    let opts = EndpointOptions::default();
    let unreachable = |source| CredentialsError::Unreachable { scheduler, source };
    let key = MemberKey::generate()?;
    let endpoint = bind_client(
        scheduler,
        None,
        &PeerAuth::Enroll { pin: token.ca_pin },
        &opts,
    )
    .map_err(unreachable)?;
    let conn = connect(&endpoint, scheduler, PeerRole::Scheduler, &opts)
        .await
        .map_err(unreachable)?;
    let answer = async {
        let (mut w, mut r) = open_stream(&conn).await?;
        w.send(&SchedulerRequest::Enroll(EnrollRequest {
            secret: token.secret,
            role,
            name: name.to_owned(),
            public_key: key.public_key(),
        }))
        .await?;
        w.finish()?;
        r.recv::<EnrollResponse>().await
    }
    .await;
    conn.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    let (certificate, ca_certificate) = match answer.map_err(unreachable)? {
        EnrollResponse::Enrolled {
            certificate,
            ca_certificate,
            ..
        } => (certificate, ca_certificate),
        EnrollResponse::Refused(refusal) => {
            return Err(CredentialsError::Refused { scheduler, refusal });
        }
    };
    let bad = |detail: &str| CredentialsError::BadAnswer {
        scheduler,
        detail: detail.to_owned(),
    };
    // The handshake already proved that the scheduler holds the pinned CA;
    // these checks catch a scheduler that answers with something unusable.
    if pki::pin_of(&ca_certificate) != token.ca_pin {
        return Err(bad("the CA certificate does not match the join token"));
    }
    let ca = CertificateDer::from(ca_certificate);
    let cert = CertificateDer::from(certificate);
    if pki::role_of(&cert) != Some(role) {
        return Err(bad("the certificate is not for the role asked for"));
    }
    let credentials = Credentials {
        ca,
        identity: key.into_identity(cert),
    };
    Ok(credentials)
}

/// Where credentials come from when a member starts.
#[derive(Debug, Clone)]
pub struct Enrollment<'a> {
    /// The credentials directory.
    pub dir: &'a Path,
    pub role: PeerRole,
    /// The member's name, shown by `distcc-rs-scheduler certs`.
    pub name: &'a str,
    /// The join token, if one was given.
    pub token: Option<&'a JoinToken>,
}

impl Enrollment<'_> {
    /// The saved credentials, if they are for this role and, when a token is
    /// given, for the token's farm; `None` means enrollment is needed.
    pub fn saved(&self) -> Result<Option<Credentials>, CredentialsError> {
        let Some(saved) = Credentials::load(self.dir)? else {
            return Ok(None);
        };
        let fits =
            saved.role() == Some(self.role) && self.token.is_none_or(|token| saved.matches(token));
        Ok(fits.then_some(saved))
    }

    /// The saved credentials, or new ones from the scheduler at the address
    /// `find` returns (called only when enrollment is needed, because
    /// finding the scheduler may mean an mDNS browse).
    pub async fn load_or_enroll<F, Fut>(&self, find: F) -> Result<Credentials, CredentialsError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<SocketAddr>>,
    {
        if let Some(saved) = self.saved()? {
            return Ok(saved);
        }
        let Some(token) = self.token else {
            return Err(CredentialsError::NotEnrolled {
                dir: self.dir.to_owned(),
            });
        };
        create_private_dir(self.dir)?;
        let _lock = lock(self.dir).await?;
        // Someone else may have enrolled while this process waited.
        if let Some(saved) = self.saved()? {
            return Ok(saved);
        }
        let scheduler = find().await.ok_or_else(|| CredentialsError::Unreachable {
            scheduler: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: NetError::Tls("no scheduler address is configured or discoverable".into()),
        })?;
        let credentials = enroll(scheduler, token, self.role, self.name).await?;
        credentials.save(self.dir)?;
        tracing::info!(
            dir = %self.dir.display(),
            role = %self.role,
            certificate = %credentials.fingerprint().short(),
            "enrolled in the farm"
        );
        Ok(credentials)
    }
}

/// Takes the enrollment lock of `dir`, waiting for it on a blocking thread.
async fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>, CredentialsError> {
    let path = dir.join(LOCK_FILE);
    let waited = path.clone();
    tokio::task::spawn_blocking(move || lock_file(&path))
        .await
        .map_err(|e| CredentialsError::Io {
            action: "lock",
            path: waited,
            source: std::io::Error::other(e),
        })?
}

/// Takes an exclusive lock on the file at `path` (created with mode 0600
/// if missing), waiting for it: the lock that serialises changes to a
/// directory of credentials or of the farm CA. Released when dropped.
pub fn lock_file(path: &Path) -> Result<nix::fcntl::Flock<File>, CredentialsError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| CredentialsError::Io {
            action: "open",
            path: path.to_owned(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        CredentialsError::Io {
            action: "lock",
            path: path.to_owned(),
            source: errno.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::FarmCa;

    #[test]
    fn credentials_round_trip_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = FarmCa::generate().unwrap();
        let creds = Credentials {
            ca: ca.cert_der().clone(),
            identity: ca.issue_identity(PeerRole::Node, "n1", 7).unwrap(),
        };
        let sub = dir.path().join("id");
        assert!(Credentials::load(&sub).unwrap().is_none());
        creds.save(&sub).unwrap();
        let back = Credentials::load(&sub).unwrap().unwrap();
        assert_eq!(back.fingerprint(), creds.fingerprint());
        assert_eq!(back.role(), Some(PeerRole::Node));
        assert_eq!(back.ca, creds.ca);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&sub), 0o700);

        fs::write(sub.join(KEY_FILE), "garbage").unwrap();
        let err = Credentials::load(&sub).unwrap_err().to_string();
        assert!(err.contains("member.key is damaged"), "{err}");
    }

    #[test]
    fn saved_credentials_of_another_role_or_farm_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FarmCa::generate().unwrap();
        Credentials {
            ca: ca.cert_der().clone(),
            identity: ca.issue_identity(PeerRole::Client, "c", 1).unwrap(),
        }
        .save(dir.path())
        .unwrap();
        let mut e = Enrollment {
            dir: dir.path(),
            role: PeerRole::Client,
            name: "c",
            token: None,
        };
        assert!(e.saved().unwrap().is_some());
        e.role = PeerRole::Node;
        assert!(e.saved().unwrap().is_none());
        e.role = PeerRole::Client;
        let other_farm = JoinToken {
            ca_pin: FarmCa::generate().unwrap().pin(),
            secret: [0; 16],
        };
        e.token = Some(&other_farm);
        assert!(e.saved().unwrap().is_none());
        let this_farm = JoinToken {
            ca_pin: ca.pin(),
            secret: [0; 16],
        };
        e.token = Some(&this_farm);
        assert!(e.saved().unwrap().is_some());
    }
}

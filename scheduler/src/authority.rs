//! The farm's certificate authority as the scheduler keeps it on disk: the
//! CA, the join token, and the record of every certificate issued and
//! revoked.
//!
//! Everything lives in `<state dir>/pki/`:
//!
//! * `ca.key` (mode 0600) and `ca.crt`: the farm CA, made on first start;
//! * `token` (mode 0600): the secret half of the join token;
//! * `members.json`: every certificate issued (serial, role, name,
//!   fingerprint, when) and whether and when it was revoked.
//!
//! The running scheduler and the admin commands (`token --rotate`,
//! `revoke`, `certs`) share these files. Every read-modify-write happens
//! under an exclusive lock on `pki/lock`, and every write is a rename of a
//! complete file, so neither ever sees half of the other's change. The
//! scheduler reads the token afresh for each enrollment and reloads the
//! revocation list when `members.json` changes, so admin commands take
//! effect without a restart.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use distcc_rs_net::credentials::{
    Credentials, CredentialsError, create_private_dir, lock_file, write_atomic,
};
use distcc_rs_net::pki::{self, FarmCa, PkiError};
use distcc_rs_net::tls::{FarmTrust, Identity, PeerAuth, Revocations};
use distcc_rs_proto::auth::{
    EnrollRefusal, EnrollRequest, EnrollResponse, TOKEN_SECRET_LEN, validate_member_name,
};
use distcc_rs_proto::{CertFingerprint, JoinToken, PeerRole};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

const CA_KEY: &str = "ca.key";
const CA_CERT: &str = "ca.crt";
const TOKEN: &str = "token";
const MEMBERS: &str = "members.json";
const LOCK: &str = "lock";

/// Why the authority's files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "{} exists but {} does not: the farm CA is incomplete; restore the missing file from a \
         backup, or delete the pki directory to create a new farm (every member must then \
         enroll again)",
        present.display(), missing.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("the farm CA in {}: {source}", dir.display())]
    Ca { dir: PathBuf, source: PkiError },
    #[error(transparent)]
    Files(#[from] CredentialsError),
    #[error("no randomness for a join token: {0}")]
    Entropy(getrandom::Error),
    #[error("{0}")]
    NoMatch(String),
}

/// What the scheduler's endpoint and server need of the authority: the
/// authority itself (for enrollment and reloads), the revocation list its
/// TLS verifier consults, and the identity and trust to bind with.
#[derive(Debug, Clone)]
pub struct Security {
    pub authority: Arc<Authority>,
    pub revocations: Revocations,
}

/// An opened authority, ready to bind the scheduler's endpoint with.
#[derive(Debug)]
pub struct Opened {
    pub security: Security,
    pub identity: Identity,
    /// Farm members, revocation list, and anonymous peers for enrollment.
    pub auth: PeerAuth,
    /// Whether the farm CA was created just now.
    pub created: bool,
}

impl Security {
    /// Opens (or creates) the authority in `state_dir` and issues the
    /// scheduler's certificate for this run.
    pub fn open(state_dir: &Path, name: &str) -> Result<Opened, AuthorityError> {
        let (authority, created) = Authority::open_or_create(state_dir)?;
        let identity = authority.scheduler_identity(name)?;
        let revocations = Revocations::default();
        revocations.replace(authority.revoked()?);
        let auth = PeerAuth::Farm(FarmTrust {
            ca: authority.ca().cert_der().clone(),
            revoked: revocations.clone(),
            allow_anonymous: true,
        });
        Ok(Opened {
            security: Security {
                authority: Arc::new(authority),
                revocations,
            },
            identity,
            auth,
            created,
        })
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub serial: u64,
    pub role: PeerRole,
    pub name: String,
    pub fingerprint: String,
    /// Seconds since the Unix epoch.
    pub issued: u64,
    /// When it was revoked, if it was.
    pub revoked: Option<u64>,
}

/// `members.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Members {
    next_serial: u64,
    members: Vec<Member>,
}

/// The farm CA and its records.
#[derive(Debug)]
pub struct Authority {
    dir: PathBuf,
    ca: FarmCa,
}

impl Authority {
    /// Opens the authority in `state_dir/pki`, creating the CA and a join
    /// token if there is none yet. The flag says whether it was created.
    pub fn open_or_create(state_dir: &Path) -> Result<(Self, bool), AuthorityError> {
        let dir = state_dir.join("pki");
        create_private_dir(&dir)?;
        let _lock = lock(&dir)?;
        let (key, cert) = (dir.join(CA_KEY), dir.join(CA_CERT));
        match (key.exists(), cert.exists()) {
            (true, true) => {
                let ca =
                    FarmCa::from_pem(&read_text(&cert)?, &read_text(&key)?).map_err(|source| {
                        AuthorityError::Ca {
                            dir: dir.clone(),
                            source,
                        }
                    })?;
                let authority = Authority { dir, ca };
                if !authority.dir.join(TOKEN).exists() {
                    authority.write_new_token()?;
                }
                Ok((authority, false))
            }
            (false, false) => {
                let ca = FarmCa::generate().map_err(|source| AuthorityError::Ca {
                    dir: dir.clone(),
                    source,
                })?;
                // The key first: a crash between the two writes leaves a
                // key without a certificate, which the next start reports
                // rather than silently replacing.
                write_atomic(&dir, CA_KEY, ca.key_pem().as_bytes())?;
                write_atomic(&dir, CA_CERT, ca.cert_pem().as_bytes())?;
                let authority = Authority { dir, ca };
                authority.write_new_token()?;
                Ok((authority, true))
            }
            (true, false) => Err(AuthorityError::Incomplete {
                present: key,
                missing: cert,
            }),
            (false, true) => Err(AuthorityError::Incomplete {
                present: cert,
                missing: key,
            }),
        }
    }

    /// The directory the authority's files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The farm CA's certificate.
    pub fn ca(&self) -> &FarmCa {
        &self.ca
    }

    /// The current join token.
    pub fn token(&self) -> Result<JoinToken, AuthorityError> {
        let path = self.dir.join(TOKEN);
        let text = read_text(&path)?;
        let mut secret = [0; TOKEN_SECRET_LEN];
        hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| AuthorityError::Damaged {
            path,
            detail: "not 32 hex digits; run `distcc-rs-scheduler token --rotate`".into(),
        })?;
        Ok(JoinToken {
            ca_pin: self.ca.pin(),
            secret,
        })
    }

    /// Replaces the join token's secret: the old token stops enrolling new
    /// members, and members already enrolled are unaffected.
    pub fn rotate_token(&self) -> Result<JoinToken, AuthorityError> {
        let _lock = lock(&self.dir)?;
        self.write_new_token()?;
        self.token()
    }

    fn write_new_token(&self) -> Result<(), AuthorityError> {
        let mut secret = [0; TOKEN_SECRET_LEN];
        getrandom::fill(&mut secret).map_err(AuthorityError::Entropy)?;
        write_atomic(
            &self.dir,
            TOKEN,
            format!("{}\n", hex::encode(secret)).as_bytes(),
        )?;
        Ok(())
    }

    /// The scheduler's own identity: issued on first start, recorded like
    /// any other certificate, and kept in `pki/scheduler/` for later runs.
    pub fn scheduler_identity(&self, name: &str) -> Result<Identity, AuthorityError> {
        let _lock = lock(&self.dir)?;
        let own = self.dir.join("scheduler");
        if let Some(saved) = Credentials::load(&own)?
            && saved.ca == *self.ca.cert_der()
        {
            let mut identity = saved.identity;
            identity.cert_chain.push(self.ca.cert_der().clone());
            return Ok(identity);
        }
        let mut members = self.members()?;
        let serial = members.take_serial();
        let identity = self
            .ca
            .scheduler_identity(serial)
            .map_err(|source| AuthorityError::Ca {
                dir: self.dir.clone(),
                source,
            })?;
        members.record(serial, PeerRole::Scheduler, name, &identity.cert_chain[0]);
        self.save_members(&members)?;
        Credentials {
            ca: self.ca.cert_der().clone(),
            identity: Identity {
                cert_chain: vec![identity.cert_chain[0].clone()],
                key: identity.key.clone_key(),
            },
        }
        .save(&own)?;
        Ok(identity)
    }

    /// Serves an enrollment request: checks the token's secret, the role,
    /// the name and the key, then issues and records a certificate.
    pub fn enroll(&self, request: &EnrollRequest) -> EnrollResponse {
        match self.try_enroll(request) {
            Ok(response) => response,
            Err(e) => EnrollResponse::Refused(EnrollRefusal::Internal(e.to_string())),
        }
    }

    fn try_enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, AuthorityError> {
        let refuse = |why| Ok(EnrollResponse::Refused(why));
        // BLAKE3 hashes compare in constant time, so the comparison says
        // nothing about how much of a guessed secret was right.
        let expected = blake3::hash(&self.token()?.secret);
        if blake3::hash(&request.secret) != expected {
            return refuse(EnrollRefusal::BadToken);
        }
        if !matches!(request.role, PeerRole::Node | PeerRole::Client) {
            return refuse(EnrollRefusal::BadRole(request.role));
        }
        if let Err(why) = validate_member_name(&request.name) {
            return refuse(EnrollRefusal::BadName(why));
        }
        let _lock = lock(&self.dir)?;
        let mut members = self.members()?;
        let serial = members.take_serial();
        let cert = match self
            .ca
            .issue(request.role, &request.name, &request.public_key, serial)
        {
            Ok(cert) => cert,
            Err(PkiError::BadPublicKey) => return refuse(EnrollRefusal::BadKey),
            Err(source) => {
                return Err(AuthorityError::Ca {
                    dir: self.dir.clone(),
                    source,
                });
            }
        };
        members.record(serial, request.role, &request.name, &cert);
        self.save_members(&members)?;
        Ok(EnrollResponse::Enrolled {
            certificate: cert.to_vec(),
            ca_certificate: self.ca.cert_der().to_vec(),
            serial,
        })
    }

    /// Every certificate issued, oldest first.
    pub fn list(&self) -> Result<Vec<Member>, AuthorityError> {
        Ok(self.members()?.members)
    }

    /// The fingerprints of revoked certificates.
    pub fn revoked(&self) -> Result<HashSet<CertFingerprint>, AuthorityError> {
        Ok(self
            .members()?
            .members
            .iter()
            .filter(|m| m.revoked.is_some())
            .filter_map(|m| parse_fingerprint(&m.fingerprint))
            .collect())
    }

    /// When `members.json` last changed, for the scheduler's reload check.
    pub fn members_changed(&self) -> Option<SystemTime> {
        fs::metadata(self.dir.join(MEMBERS))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Revokes the certificates `selector` names: a serial number, a member
    /// name (every certificate issued to it), or a fingerprint prefix of at
    /// least 8 hex digits. Returns the certificates newly revoked.
    pub fn revoke(&self, selector: &str) -> Result<Vec<Member>, AuthorityError> {
        let _lock = lock(&self.dir)?;
        let mut members = self.members()?;
        let chosen = select(&members.members, selector)?;
        let now = unix_now();
        let mut revoked = Vec::new();
        for member in &mut members.members {
            if chosen.contains(&member.serial) && member.revoked.is_none() {
                if member.role == PeerRole::Scheduler {
                    continue;
                }
                member.revoked = Some(now);
                revoked.push(member.clone());
            }
        }
        self.save_members(&members)?;
        Ok(revoked)
    }

    fn members(&self) -> Result<Members, AuthorityError> {
        let path = self.dir.join(MEMBERS);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuthorityError::Damaged {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Members {
                next_serial: 1,
                members: Vec::new(),
            }),
            Err(source) => Err(AuthorityError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    fn save_members(&self, members: &Members) -> Result<(), AuthorityError> {
        let json = serde_json::to_vec_pretty(members).expect("the records serialise");
        write_atomic(&self.dir, MEMBERS, &json)?;
        Ok(())
    }
}

impl Members {
    fn take_serial(&mut self) -> u64 {
        let serial = self.next_serial.max(1);
        self.next_serial = serial + 1;
        serial
    }

    fn record(&mut self, serial: u64, role: PeerRole, name: &str, cert: &[u8]) {
        self.members.push(Member {
            serial,
            role,
            name: name.to_owned(),
            fingerprint: pki::fingerprint(cert).to_string(),
            issued: unix_now(),
            revoked: None,
        });
    }
}

/// The serials `selector` names. Pure, so the matching rules are tested
/// with data.
pub fn select(members: &[Member], selector: &str) -> Result<HashSet<u64>, AuthorityError> {
    let selector = selector.trim();
    let by_serial: HashSet<u64> = selector
        .parse::<u64>()
        .ok()
        .into_iter()
        .filter(|s| members.iter().any(|m| m.serial == *s))
        .collect();
    let by_name: HashSet<u64> = members
        .iter()
        .filter(|m| m.name == selector)
        .map(|m| m.serial)
        .collect();
    let hex_prefix = selector.len() >= 8 && selector.chars().all(|c| c.is_ascii_hexdigit());
    let by_fingerprint: HashSet<u64> = members
        .iter()
        .filter(|m| hex_prefix && m.fingerprint.starts_with(&selector.to_ascii_lowercase()))
        .map(|m| m.serial)
        .collect();
    let kinds = [&by_serial, &by_name, &by_fingerprint];
    let matched: Vec<_> = kinds.iter().filter(|set| !set.is_empty()).collect();
    match matched.as_slice() {
        [] => Err(AuthorityError::NoMatch(format!(
            "no certificate has the serial, name or fingerprint prefix {selector:?}; \
             `distcc-rs-scheduler certs` lists them"
        ))),
        [one] => Ok((**one).clone()),
        _ => Err(AuthorityError::NoMatch(format!(
            "{selector:?} is ambiguous: it matches a serial, a name or a fingerprint of \
             different certificates; use a longer fingerprint prefix"
        ))),
    }
}

fn parse_fingerprint(hex_text: &str) -> Option<CertFingerprint> {
    let mut out = [0; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(CertFingerprint(out))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_text(path: &Path) -> Result<String, AuthorityError> {
    fs::read_to_string(path).map_err(|source| AuthorityError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn lock(dir: &Path) -> Result<Flock<File>, AuthorityError> {
    Ok(lock_file(&dir.join(LOCK))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distcc_rs_net::pki::MemberKey;

    fn request(token: &JoinToken, role: PeerRole, name: &str) -> EnrollRequest {
        EnrollRequest {
            secret: token.secret,
            role,
            name: name.into(),
            public_key: MemberKey::generate().unwrap().public_key(),
        }
    }

    #[test]
    fn the_ca_is_created_once_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let (a, created) = Authority::open_or_create(state.path()).unwrap();
        assert!(created);
        let mode = |name: &str| {
            fs::metadata(a.dir().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(mode(TOKEN), 0o600);
        let token = a.token().unwrap();
        let (b, created) = Authority::open_or_create(state.path()).unwrap();
        assert!(!created);
        assert_eq!(b.ca().cert_der(), a.ca().cert_der());
        assert_eq!(b.token().unwrap(), token);

        fs::remove_file(a.dir().join(CA_CERT)).unwrap();
        let err = Authority::open_or_create(state.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("incomplete"), "{err}");
    }

    #[test]
    fn enrollment_needs_the_current_token_and_a_member_role() {
        let state = tempfile::tempdir().unwrap();
        let (a, _) = Authority::open_or_create(state.path()).unwrap();
        let token = a.token().unwrap();
        let EnrollResponse::Enrolled {
            certificate,
            ca_certificate,
            serial,
        } = a.enroll(&request(&token, PeerRole::Node, "n1"))
        else {
            panic!("refused")
        };
        assert_eq!(ca_certificate, a.ca().cert_der().to_vec());
        let cert = quinn::rustls::pki_types::CertificateDer::from(certificate);
        assert_eq!(pki::role_of(&cert), Some(PeerRole::Node));
        assert!(a.ca().verifies(&cert));
        assert_eq!(a.list().unwrap()[0].serial, serial);

        let wrong = JoinToken {
            secret: [0; 16],
            ..token
        };
        assert_eq!(
            a.enroll(&request(&wrong, PeerRole::Client, "c")),
            EnrollResponse::Refused(EnrollRefusal::BadToken)
        );
        assert_eq!(
            a.enroll(&request(&token, PeerRole::Scheduler, "s")),
            EnrollResponse::Refused(EnrollRefusal::BadRole(PeerRole::Scheduler))
        );
        assert!(matches!(
            a.enroll(&request(&token, PeerRole::Client, "a b")),
            EnrollResponse::Refused(EnrollRefusal::BadName(_))
        ));
        let mut bad_key = request(&token, PeerRole::Client, "c");
        bad_key.public_key = vec![4; 10];
        assert_eq!(
            a.enroll(&bad_key),
            EnrollResponse::Refused(EnrollRefusal::BadKey)
        );

        // A rotated token stops new enrollments with the old one.
        let rotated = a.rotate_token().unwrap();
        assert_ne!(rotated, token);
        assert_eq!(
            a.enroll(&request(&token, PeerRole::Client, "c")),
            EnrollResponse::Refused(EnrollRefusal::BadToken)
        );
        assert!(matches!(
            a.enroll(&request(&rotated, PeerRole::Client, "c")),
            EnrollResponse::Enrolled { .. }
        ));
    }

    #[test]
    fn revocation_is_recorded_and_listed() {
        let state = tempfile::tempdir().unwrap();
        let (a, _) = Authority::open_or_create(state.path()).unwrap();
        let first = a.scheduler_identity("sched").unwrap();
        // A restart reuses the scheduler's certificate.
        let again = a.scheduler_identity("sched").unwrap();
        assert_eq!(first.cert_chain, again.cert_chain);
        assert_eq!(first.cert_chain.len(), 2);
        assert_eq!(a.list().unwrap().len(), 1);
        let token = a.token().unwrap();
        a.enroll(&request(&token, PeerRole::Node, "n1"));
        a.enroll(&request(&token, PeerRole::Client, "alice@h"));
        let before = a.members_changed();
        assert!(a.revoked().unwrap().is_empty());
        let revoked = a.revoke("alice@h").unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].role, PeerRole::Client);
        let set = a.revoked().unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&parse_fingerprint(&revoked[0].fingerprint).unwrap()));
        assert!(a.members_changed() >= before);
        // Revoking again changes nothing; the scheduler cannot be revoked.
        assert!(a.revoke("alice@h").unwrap().is_empty());
        assert!(a.revoke("sched").unwrap().is_empty());
        assert!(a.revoke("nobody").is_err());
    }

    #[test]
    fn selectors_match_serials_names_and_fingerprint_prefixes() {
        let member = |serial, name: &str, fp: &str| Member {
            serial,
            role: PeerRole::Client,
            name: name.into(),
            fingerprint: fp.into(),
            issued: 0,
            revoked: None,
        };
        let members = [
            member(1, "a", &"ab".repeat(32)),
            member(2, "b", &"cd".repeat(32)),
            member(3, "b", &"ce".repeat(32)),
        ];
        assert_eq!(select(&members, "1").unwrap(), [1].into());
        assert_eq!(select(&members, "b").unwrap(), [2, 3].into());
        assert_eq!(select(&members, "CDCDCDCD").unwrap(), [2].into());
        // Too short a prefix is not a fingerprint.
        assert!(select(&members, "cdcd").is_err());
        assert!(select(&members, "9").is_err());
    }
}

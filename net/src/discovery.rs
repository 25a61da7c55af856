//! mDNS: advertising a daemon and browsing for the farm's other members.
//!
//! A thin layer over mdns-sd. Its daemon runs on a thread of its own and
//! talks through channels; [`Mdns::browse`] turns its events into
//! [`Discovered`] events on a tokio channel, after the pure parts of
//! `distcc_rs_proto::discovery` have filtered them by role, farm and
//! protocol version and merged repeated resolutions of one service.
//!
//! mDNS only says who is out there. Whether a node is in the farm is decided
//! by its QUIC connection (keep-alives), never by mDNS expiry: a node killed
//! with SIGKILL sends no goodbye and stays in other machines' mDNS caches
//! until its records expire, minutes later.
//!
//! Starting an [`Mdns`] joins the mDNS multicast groups on every interface
//! of the network namespace, so only daemons started without `--no-mdns`
//! and clients without a configured scheduler ever do it.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use distcc_rs_proto::discovery::{self, Advert, Ignored, Role, Sightings};
use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tracing::{debug, info};

/// How long [`Mdns::shutdown`] waits for the goodbye packets to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why mDNS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS daemon could not start (no multicast, no threads).
    #[error("cannot start mDNS: {0}")]
    Start(mdns_sd::Error),
    /// The service could not be registered.
    #[error("cannot advertise {instance:?} over mDNS: {source}")]
    Advertise {
        instance: String,
        source: mdns_sd::Error,
    },
    /// Browsing could not start.
    #[error("cannot browse for {service} over mDNS: {source}")]
    Browse {
        service: &'static str,
        source: mdns_sd::Error,
    },
}

/// Something a browser learned about a service of its role and farm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovered {
    /// A service appeared, or a later resolution added addresses or changed
    /// its advert. `addrs` holds every address seen for it so far (with the
    /// advertised port), in no particular order: see
    /// [`discovery::dial_order`].
    Found {
        instance: String,
        advert: Advert,
        addrs: Vec<SocketAddr>,
    },
    /// The service said goodbye (a graceful shutdown) or its records
    /// expired.
    Removed { instance: String, advert: Advert },
}

/// A running mDNS responder and querier. Dropping it stops the daemon
/// without waiting; [`Mdns::shutdown`] also waits for the goodbyes that
/// tell browsers the services are gone.
pub struct Mdns {
    daemon: ServiceDaemon,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns").finish_non_exhaustive()
    }
}

impl Mdns {
    /// Starts the mDNS daemon thread, using the interfaces a socket bound
    /// to `listen` is reachable on: all of them for the unspecified address,
    /// else only the one holding `listen`. (mdns-sd still joins the mDNS
    /// multicast group on every interface as it starts; from then on it
    /// sends and answers only on the chosen ones.)
    pub fn start(listen: IpAddr) -> Result<Mdns, DiscoveryError> {
        let daemon = ServiceDaemon::new().map_err(DiscoveryError::Start)?;
        if !listen.is_unspecified() {
            // Commands run in order, so no browse or advert comes before
            // the restriction.
            daemon
                .disable_interface(IfKind::All)
                .and_then(|()| daemon.enable_interface(IfKind::Addr(listen)))
                .map_err(DiscoveryError::Start)?;
        }
        Ok(Mdns { daemon })
    }

    /// Advertises `advert` under an instance name made unique by `unique`
    /// (a node id, a random tag), with the addresses of the interfaces the
    /// daemon was started for (see [`Mdns::start`]). The addresses follow
    /// the interfaces' own as they change. Returns the instance name.
    pub fn advertise(&self, advert: &Advert, unique: &str) -> Result<String, DiscoveryError> {
        let instance = discovery::instance_name(advert.name(), unique);
        let host = discovery::host_name(advert.role(), unique);
        let txt = advert.to_txt();
        let error = |source| DiscoveryError::Advertise {
            instance: instance.clone(),
            source,
        };
        let info = ServiceInfo::new(
            advert.role().service_type(),
            &instance,
            &host,
            "",
            advert.port(),
            &txt[..],
        )
        .map_err(error)?
        .enable_addr_auto();
        self.daemon.register(info).map_err(error)?;
        Ok(instance)
    }

    /// Browses for services of `role` in farm `farm`, speaking this
    /// protocol version. Services of other farms, versions or malformed
    /// ones are logged once each and otherwise ignored. Must be called from
    /// within a tokio runtime; the events stop when the daemon stops or the
    /// receiver is dropped.
    pub fn browse(
        &self,
        role: Role,
        farm: &str,
    ) -> Result<mpsc::UnboundedReceiver<Discovered>, DiscoveryError> {
        let service = role.service_type();
        let events = self
            .daemon
            .browse(service)
            .map_err(|source| DiscoveryError::Browse { service, source })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let farm = farm.to_owned();
        tokio::spawn(async move {
            let mut browser = Browser {
                role,
                farm,
                sightings: Sightings::new(),
                ignored: HashSet::new(),
            };
            while let Ok(event) = events.recv_async().await {
                if let Some(found) = browser.handle(event)
                    && tx.send(found).is_err()
                {
                    break;
                }
            }
        });
        Ok(rx)
    }

    /// Withdraws every advertised service (browsers see them removed) and
    /// stops the daemon.
    pub async fn shutdown(self) {
        let Ok(status) = self.daemon.shutdown() else {
            return;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, status.recv_async())
            .await
            .is_err()
        {
            debug!("the mDNS daemon did not confirm its shutdown in time");
        }
    }
}

/// After a resolution that carried only IPv6 addresses, how long
/// [`find_scheduler`] waits for one that also carries IPv4 (the same
/// service resolves more than once, with different subsets of its
/// addresses, and IPv4 is the likelier to be routable).
const IPV4_GRACE: Duration = Duration::from_millis(300);

/// Browses on every interface for the scheduler of `farm` for at most
/// `timeout` and returns the address to dial it at, preferring IPv4;
/// `Ok(None)` when none answered. For the client (which caches the answer)
/// and tools run by hand (`distcc-rs-pack push`) that have no address
/// configured. Must be called from within a tokio runtime.
pub async fn find_scheduler(
    farm: &str,
    timeout: Duration,
) -> Result<Option<SocketAddr>, DiscoveryError> {
    let mdns = Mdns::start(std::net::Ipv6Addr::UNSPECIFIED.into())?;
    let mut found = mdns.browse(Role::Scheduler, farm)?;
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut best: Option<SocketAddr> = None;
    // The caller binds its endpoint to the family of the address chosen
    // here, so any family will do.
    let any_family: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    loop {
        let event = match tokio::time::timeout_at(deadline, found.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => break,
        };
        let Discovered::Found {
            advert: Advert::Scheduler(scheduler),
            addrs,
            instance,
        } = event
        else {
            continue;
        };
        let Some(addr) = discovery::dial_order(addrs, any_family).first().copied() else {
            continue;
        };
        debug!(instance, %addr, name = %scheduler.name, "found a scheduler over mDNS");
        if addr.is_ipv4() {
            best = Some(addr);
            break;
        }
        if best.is_none() {
            deadline = deadline.min(tokio::time::Instant::now() + IPV4_GRACE);
        }
        best = Some(addr);
    }
    // Dropping the daemon stops it; it advertised nothing, so there is
    // nothing to withdraw.
    drop(mdns);
    Ok(best)
}

impl Drop for Mdns {
    fn drop(&mut self) {
        // Already shut down when `shutdown` ran; then this fails harmlessly.
        let _ = self.daemon.shutdown();
    }
}

/// The state of one browse: what was seen, and what was already reported
/// as ignored (so each foreign service is logged once, not on every
/// resolution).
struct Browser {
    role: Role,
    farm: String,
    sightings: Sightings,
    ignored: HashSet<(String, String)>,
}

impl Browser {
    fn handle(&mut self, event: ServiceEvent) -> Option<Discovered> {
        match event {
            ServiceEvent::ServiceResolved(service) => self.resolved(&service),
            ServiceEvent::ServiceRemoved(_, instance) => {
                let gone = self.sightings.removed(&instance)?;
                Some(Discovered::Removed {
                    instance,
                    advert: gone.advert,
                })
            }
            _ => None,
        }
    }

    fn resolved(&mut self, service: &ResolvedService) -> Option<Discovered> {
        let txt: Vec<(&str, &str)> = service
            .txt_properties
            .iter()
            .map(|p| (p.key(), p.val_str()))
            .collect();
        let instance = service.fullname.clone();
        let advert = match discovery::admit(&txt, self.role, &self.farm) {
            Ok(advert) => advert,
            Err(why) => {
                self.ignore(&instance, &why);
                return None;
            }
        };
        let addrs = service
            .addresses
            .iter()
            .filter_map(|ip| socket_addr(ip, service.port));
        let sighting = self.sightings.resolved(&instance, advert, addrs)?;
        Some(Discovered::Found {
            instance,
            advert: sighting.advert.clone(),
            addrs: sighting.addrs.iter().copied().collect(),
        })
    }

    fn ignore(&mut self, instance: &str, why: &Ignored) {
        if self.ignored.insert((instance.to_owned(), why.to_string())) {
            info!(
                instance,
                "ignoring the {} service {instance}: {why}", self.role
            );
        }
    }
}

/// An address mdns-sd resolved, as something a socket can dial. IPv6
/// addresses keep the interface they were seen on as their scope, which
/// link-local addresses need.
fn socket_addr(ip: &ScopedIp, port: u16) -> Option<SocketAddr> {
    match ip {
        ScopedIp::V4(v4) => Some(SocketAddr::new((*v4.addr()).into(), port)),
        ScopedIp::V6(v6) => Some(SocketAddr::V6(SocketAddrV6::new(
            *v6.addr(),
            port,
            0,
            v6.scope_id().index,
        ))),
        // A kind of address this build does not know how to dial.
        _ => None,
    }
}

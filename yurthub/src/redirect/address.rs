//! The hub address (`169.254.2.1/32` or `fd00::2:1/128` by default) on an
//! existing link (`lo` by default), through rtnetlink: ensured at install,
//! re-ensured every `address_resync` and at once when the kernel announces
//! that an address was deleted from that link (RTM_DELADDR multicast), and
//! removed on shutdown. No link is created and no firewall rule is written:
//! Linux delivers a packet to any local address whatever interface it
//! arrives on, so a pod's connection through its veth reaches an address on
//! the node's `lo`.
//!
//! The netlink socket is bound to the network namespace of the thread that
//! calls [`Manager::start`] (or [`remove`]); later operations stay there
//! whichever thread runs them.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    },
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Error;

/// Keeps the hub address on its link until dropped or [`Manager::stop`]ped.
pub(crate) struct Manager {
    handle: Handle,
    address: IpAddr,
    link: String,
    present: Arc<AtomicBool>,
    connection: JoinHandle<()>,
    reconcile: JoinHandle<()>,
}

impl Manager {
    /// Ensures the address now (failure is fatal: the redirect would send
    /// pods to an address nobody owns) and starts the reconcile task.
    pub(crate) async fn start(
        address: IpAddr,
        link: &str,
        resync: Duration,
    ) -> Result<Self, Error> {
        let (connection, handle, mut events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(Error::Netlink)?;
        let connection = tokio::spawn(connection);
        let added = match ensure(&handle, link, address).await {
            Ok(added) => added,
            Err(err) => {
                connection.abort();
                return Err(err);
            }
        };
        if added {
            info!(%address, link, "added hub address");
        } else {
            debug!(%address, link, "hub address already present");
        }
        let present = Arc::new(AtomicBool::new(true));

        let reconcile = {
            let handle = handle.clone();
            let link = link.to_owned();
            let present = Arc::clone(&present);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(resync);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                let mut events_open = true;
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        event = events.next(), if events_open => match event {
                            Some((message, _)) => {
                                if !is_deletion_of(&message.payload, address) {
                                    continue;
                                }
                                debug!(%address, "hub address deleted externally");
                            }
                            None => {
                                warn!("netlink address events stopped; relying on periodic resync");
                                events_open = false;
                                continue;
                            }
                        },
                    }
                    match ensure(&handle, &link, address).await {
                        Ok(added) => {
                            present.store(true, Ordering::Relaxed);
                            if added {
                                warn!(%address, link, "hub address was missing; re-added");
                            }
                        }
                        Err(err) => {
                            present.store(false, Ordering::Relaxed);
                            warn!(%address, link, error = %err, "cannot ensure hub address");
                        }
                    }
                }
            })
        };

        Ok(Self {
            handle,
            address,
            link: link.to_owned(),
            present,
            connection,
            reconcile,
        })
    }

    /// Whether the address was on the link at the last check.
    pub(crate) fn present(&self) -> bool {
        self.present.load(Ordering::Relaxed)
    }

    /// Stops reconciling; removes the address unless `keep`.
    pub(crate) async fn stop(self, keep: bool) -> Result<bool, Error> {
        self.reconcile.abort();
        let removed = if keep {
            false
        } else {
            remove_with(&self.handle, &self.link, self.address).await?
        };
        Ok(removed)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.reconcile.abort();
        self.connection.abort();
    }
}

/// Removes `address` from `link` with a short-lived netlink connection.
/// Returns whether it was there; a missing link counts as "not there".
pub(crate) async fn remove(address: IpAddr, link: &str) -> Result<bool, Error> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
    let connection = tokio::spawn(connection);
    let result = match remove_with(&handle, link, address).await {
        Err(Error::LinkNotFound { .. }) => Ok(false),
        other => other,
    };
    connection.abort();
    result
}

fn prefix_len(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn is_deletion_of(payload: &NetlinkPayload<RouteNetlinkMessage>, address: IpAddr) -> bool {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(message)) => {
            carries(message, address)
        }
        _ => false,
    }
}

fn carries(message: &AddressMessage, address: IpAddr) -> bool {
    message.attributes.iter().any(|attribute| match attribute {
        AddressAttribute::Address(a) | AddressAttribute::Local(a) => *a == address,
        _ => false,
    })
}

async fn link_index(handle: &Handle, link: &str) -> Result<u32, Error> {
    let mut links = handle.link().get().match_name(link.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(message)) => Ok(message.header.index),
        Ok(None) => Err(Error::LinkNotFound {
            link: link.to_owned(),
        }),
        // The kernel answers ENODEV for an unknown name.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(Error::LinkNotFound {
                link: link.to_owned(),
            })
        }
        Err(source) => Err(netlink_error(
            "listing links",
            address_unspecified(),
            link,
            source,
        )),
    }
}

fn address_unspecified() -> IpAddr {
    IpAddr::from([0u8, 0, 0, 0])
}

async fn find(
    handle: &Handle,
    index: u32,
    address: IpAddr,
) -> Result<Option<AddressMessage>, rtnetlink::Error> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(address)
        .execute();
    addresses.try_next().await
}

/// Adds the address if missing; returns whether it added it.
async fn ensure(handle: &Handle, link: &str, address: IpAddr) -> Result<bool, Error> {
    let index = link_index(handle, link).await?;
    let existing = find(handle, index, address)
        .await
        .map_err(|e| netlink_error("listing addresses", address, link, e))?;
    if existing.is_some() {
        return Ok(false);
    }
    let mut request = handle
        .address()
        .add(index, address, prefix_len(address))
        .replace();
    if address.is_ipv6() {
        // Without NODAD a new IPv6 address is "tentative" until duplicate
        // address detection runs (asynchronously, even on lo), and binding
        // the hub's listener to it fails meanwhile with EADDRNOTAVAIL. A
        // host-local /128 has nobody to collide with.
        let message = request.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request
        .execute()
        .await
        .map_err(|e| netlink_error("adding", address, link, e))?;
    Ok(true)
}

async fn remove_with(handle: &Handle, link: &str, address: IpAddr) -> Result<bool, Error> {
    let index = link_index(handle, link).await?;
    let Some(message) = find(handle, index, address)
        .await
        .map_err(|e| netlink_error("listing addresses", address, link, e))?
    else {
        return Ok(false);
    };
    match handle.address().del(message).execute().await {
        Ok(()) => Ok(true),
        // Deleted concurrently: the goal is reached.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => Ok(false),
        Err(e) => Err(netlink_error("removing", address, link, e)),
    }
}

fn netlink_error(
    operation: &'static str,
    address: IpAddr,
    link: &str,
    source: rtnetlink::Error,
) -> Error {
    if let rtnetlink::Error::NetlinkError(e) = &source
        && e.raw_code() == -libc::EPERM
    {
        return Error::PermissionDenied {
            operation: format!("{operation} hub address {address} on {link} (rtnetlink)"),
            source: e.to_io(),
        };
    }
    Error::Address {
        operation,
        address,
        link: link.to_owned(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_route::address::AddressMessage;

    use super::*;

    #[test]
    fn recognises_deletion_of_our_address() {
        let ours = IpAddr::V4(Ipv4Addr::new(169, 254, 2, 1));
        let mut message = AddressMessage::default();
        message.attributes.push(AddressAttribute::Local(ours));
        let deletion =
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(message.clone()));
        let addition = NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(message));
        assert!(is_deletion_of(&deletion, ours));
        assert!(!is_deletion_of(&addition, ours));
        assert!(!is_deletion_of(
            &deletion,
            IpAddr::V4(Ipv4Addr::new(169, 254, 2, 2))
        ));
    }

    #[test]
    fn host_prefixes() {
        assert_eq!(prefix_len("169.254.2.1".parse().expect("ip")), 32);
        assert_eq!(prefix_len("fd00::2:1".parse().expect("ip")), 128);
    }
}

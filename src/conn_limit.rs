//! Caps on connections that span sessions: concurrent connections per client address, and
//! handshakes in progress (PROXY header, implicit TLS) per client address and in total.
//!
//! Input: a client address and the current [`Caps`] (read from the generation at each call, so
//! a reload applies to the next connection). Output: an owned slot that frees itself on drop, or
//! [`Over`] when a per-address cap is reached. Bookkeeping under one mutex: no I/O, no clock.
//!
//! Why handshakes have caps of their own (issue 9): a connection that never sends its
//! ClientHello costs nothing to open and held a global slot for the whole handshake timeout, so
//! one address could fill `max_connections` and shut everyone out. Bounding handshakes in
//! progress per address keeps one source to a small share.
//!
//! The total (`max_handshakes`) counts handshakes under way (first bytes received) and evicts
//! instead of refusing: at the cap, a handshake that starts takes the place of the oldest one
//! under way (see `Waiting`). Its [`HandshakeSlot::evicted`] then resolves and its session
//! closes the connection. Attackers from many addresses, each under its allowance, could
//! otherwise hold every handshake slot and shut out every new TLS client for the whole
//! handshake timeout; a real client's handshake takes milliseconds (the admin listener does
//! the same with partial requests, `crate::admin`). Connections that have sent nothing yet
//! are bounded by `max_connections` instead ([`ConnLimits::make_room`]).
//!
//! Memory: an entry exists only while its address holds a slot, so the tables never hold more
//! keys than there are open connections (at most `max_connections`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Refused;

/// Settings, from `[limits]`. 0 switches a cap off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Concurrent connections from one client address (IPv6: one /64), held for the whole
    /// session.
    pub connections_per_ip: usize,
    /// Handshakes in progress over all listeners.
    pub handshakes: usize,
    /// Handshakes in progress from one client address (IPv6: one /64).
    pub handshakes_per_ip: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            // Dovecot's mail_max_userip_connections is 10 per user+IP; a NAT'd office shares
            // one address, so the per-IP cap is larger.
            connections_per_ip: 100,
            // Handshakes under way (bytes received, TLS state held); a real one takes a few
            // round trips, so a thousand at once is a burst of ~100k connections/s or a flood.
            // Silent connections do not count (see `Waiting`).
            handshakes: 1000,
            // Enough for a NAT'd office reconnecting at once over slow links; one address
            // holding more half-open connections than this is not a mail client.
            handshakes_per_ip: 20,
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `max_connections_per_ip`.
    ConnectionsPerIp,
    /// `max_handshakes_per_ip`.
    HandshakesPerIp,
}

impl From<Over> for Refused {
    /// The `reason` label of `mailgate_connections_refused_total`.
    fn from(over: Over) -> Refused {
        match over {
            Over::ConnectionsPerIp => Refused::Limit,
            Over::HandshakesPerIp => Refused::Handshakes,
        }
    }
}

/// The address a cap counts. IPv4 (and IPv4-mapped IPv6) as is. IPv6 by its /64: one
/// subscriber line or host is normally given a whole /64 (RFC 6177), so counting single
/// addresses would let one host rotate through 2^64 of them. The cost: hosts sharing a /64
/// share a cap, as hosts behind one NAT'd IPv4 address do.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[derive(Debug, Default)]
struct Counts {
    connections: HashMap<IpAddr, usize>,
    /// Per-address handshake shares, evicted ones included until their sessions drop them
    /// (the per-address cap counts what the address still holds).
    handshakes: HashMap<IpAddr, usize>,
    /// Handshakes in progress and not yet evicted.
    waiting: Waiting,
    /// Sessions past their handshake that have not logged in, by arrival, each with the
    /// sender that displaces it (see [`ConnLimits::make_room`]).
    prelogin: BTreeMap<u64, oneshot::Sender<()>>,
    next: u64,
    /// [`SILENT_GRACE`], shorter in tests.
    silent_grace: Duration,
}

/// Handshakes in progress and not yet evicted, in two classes, each by arrival (the first is
/// the oldest) with the sender that evicts it.
///
/// *Silent*: nothing received yet (a half-open connection, or one whose first bytes are still
/// on their way). It holds no TLS state (the session waits for its first bytes before making
/// any), so it does not count against `max_handshakes`; silent connections are bounded by the
/// per-address handshake cap, the handshake timeout and `max_connections`, where
/// [`ConnLimits::make_room`] closes the oldest of them once they are past [`SILENT_GRACE`].
///
/// *Speaking*: bytes arrived, a TLS handshake (or PROXY header) is under way and holds state.
/// These count against `max_handshakes`, and at the cap the oldest gives way: a handshake still
/// running after all newer ones is the slowest, a slowloris' or a stalled one; a real client's
/// takes milliseconds. (Tried in the soak and dropped: evicting silent ones at this cap turned
/// their pool over in milliseconds, so legitimate connections whose task had not yet run were
/// evicted; evicting from the address holding the most pushed out a NAT'd office.)
/// A handshake moves from silent to speaking when the session reports its first bytes through
/// its [`Spoke`].
#[derive(Debug, Default)]
struct Waiting {
    silent: BTreeMap<u64, Silent>,
    speaking: BTreeMap<u64, oneshot::Sender<()>>,
}

#[derive(Debug)]
struct Silent {
    kick: oneshot::Sender<()>,
    since: Instant,
}

/// How long a silent connection is spared by [`ConnLimits::make_room`]: a client sends its
/// first bytes with its first packet, but its session task may not have run yet to see them
/// when the machine is loaded (under the soak's attack, with ~1,000 connections/s displaced,
/// pools of silent connections turned over in milliseconds and legitimate connections were
/// displaced before their task's first poll). Two seconds covers the p99 login latency of a
/// loaded two-core machine.
pub const SILENT_GRACE: Duration = Duration::from_secs(2);

/// Held by a session to report its connection's first bytes (see `Waiting`).
#[derive(Debug, Clone)]
pub struct Spoke {
    counts: Arc<Mutex<Counts>>,
    id: u64,
    /// `max_handshakes` when the connection came (0: no cap).
    cap: usize,
}

impl Spoke {
    /// The connection's first bytes are here: it now counts as a handshake under way, and at
    /// the cap the oldest other one gives way. Again (a second step): nothing.
    pub fn now(&self) {
        let mut counts = lock(&self.counts);
        let Some(entry) = counts.waiting.silent.remove(&self.id) else {
            return;
        };
        // len >= cap >= 1: there is always one to pop.
        while self.cap != 0 && counts.waiting.speaking.len() >= self.cap {
            if let Some((_, kick)) = counts.waiting.speaking.pop_first() {
                let _ = kick.send(());
            }
        }
        counts.waiting.speaking.insert(self.id, entry.kick);
    }
}

impl Waiting {
    fn total(&self) -> usize {
        self.silent.len() + self.speaking.len()
    }

    /// Take handshake `id` out of the table, whichever class it is in (gone if evicted).
    fn remove(&mut self, id: u64) {
        if self.silent.remove(&id).is_none() {
            self.speaking.remove(&id);
        }
    }

    /// Evict the oldest silent handshake if it has been silent since before `before`; `false`
    /// if there is none.
    fn evict_silent(&mut self, before: Instant) -> bool {
        match self.silent.first_entry() {
            Some(entry) if entry.get().since <= before => {
                let _ = entry.remove().kick.send(());
                true
            }
            _ => false,
        }
    }
}

/// Shared by every listener. Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub struct ConnLimits(Arc<Mutex<Counts>>);

/// Not derived: a derived one would give silent connections no grace.
impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits::with_silent_grace(SILENT_GRACE)
    }
}

/// The slots a connection was admitted with at accept, handed to its session.
#[derive(Debug, Default)]
pub struct Admission {
    /// `None` behind a PROXY balancer: the session takes it once the header names the client.
    pub connection: Option<ConnectionSlot>,
    /// `Some` while a PROXY header or implicit TLS handshake is to come; the session drops it
    /// when the handshake ends.
    pub handshake: Option<HandshakeSlot>,
}

/// One connection slot of a client address; freed on drop.
#[must_use = "dropping the slot frees it at once"]
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<Mutex<Counts>>,
    key: IpAddr,
}

/// One handshake in progress: a share of the total, and of its client address once that is
/// known (at accept, or after the PROXY header). Freed on drop, i.e. when the handshake ends.
#[must_use = "dropping the slot ends the handshake's accounting at once"]
#[derive(Debug)]
pub struct HandshakeSlot {
    counts: Arc<Mutex<Counts>>,
    key: Option<IpAddr>,
    id: u64,
    kicked: Kicked,
    spoke: Spoke,
}

/// A pre-login session's place in the table [`ConnLimits::make_room`] displaces from; freed on
/// drop (at login, or when the session ends).
#[must_use = "dropping the slot takes the session out of the table at once"]
#[derive(Debug)]
pub struct PreloginSlot {
    counts: Arc<Mutex<Counts>>,
    id: u64,
    kicked: Kicked,
}

impl PreloginSlot {
    /// Resolves once the session was displaced to make room (stays resolved); pending
    /// otherwise.
    pub async fn displaced(&mut self) {
        self.kicked.wait().await;
    }
}

impl Drop for PreloginSlot {
    fn drop(&mut self) {
        lock(&self.counts).prelogin.remove(&self.id);
    }
}

/// The receiving end of an eviction, safe to await again and again (each handshake step and
/// each read races it): once kicked it stays resolved.
#[derive(Debug)]
struct Kicked {
    rx: oneshot::Receiver<()>,
    /// Set once `rx` has resolved (a oneshot must not be polled after it completed).
    done: bool,
}

impl Kicked {
    fn new(rx: oneshot::Receiver<()>) -> Kicked {
        Kicked { rx, done: false }
    }

    async fn wait(&mut self) {
        if !self.done {
            if (&mut self.rx).await.is_err() {
                // The sender is only dropped unsent when the slot itself goes away.
                std::future::pending::<()>().await;
            }
            self.done = true;
        }
    }
}

impl ConnLimits {
    pub fn new() -> ConnLimits {
        ConnLimits::default()
    }

    /// With another grace for silent connections at `max_connections` (tests).
    pub fn with_silent_grace(grace: Duration) -> ConnLimits {
        ConnLimits(Arc::new(Mutex::new(Counts {
            silent_grace: grace,
            ..Counts::default()
        })))
    }

    /// Take a connection slot for `ip`.
    pub fn connection(&self, ip: IpAddr, caps: &Caps) -> Result<ConnectionSlot, Over> {
        let key = client_key(ip);
        let mut counts = lock(&self.0);
        take(
            &mut counts.connections,
            key,
            caps.connections_per_ip,
            Over::ConnectionsPerIp,
        )?;
        Ok(ConnectionSlot {
            counts: self.0.clone(),
            key,
        })
    }

    /// Take a handshake slot, counted for `ip` too when it is known (`None` behind a PROXY
    /// balancer until the header names the client: see [`HandshakeSlot::attribute`]). It counts
    /// against the total once the connection speaks ([`Spoke::now`]), evicting the oldest at
    /// the cap (module docs); only the per-address cap refuses.
    pub fn handshake(&self, ip: Option<IpAddr>, caps: &Caps) -> Result<HandshakeSlot, Over> {
        let mut counts = lock(&self.0);
        let key = ip.map(client_key);
        if let Some(key) = key {
            take(
                &mut counts.handshakes,
                key,
                caps.handshakes_per_ip,
                Over::HandshakesPerIp,
            )?;
        }
        let id = counts.next;
        counts.next += 1;
        let (kick, evicted) = oneshot::channel();
        counts.waiting.silent.insert(
            id,
            Silent {
                kick,
                since: Instant::now(),
            },
        );
        let spoke = Spoke {
            counts: self.0.clone(),
            id,
            cap: caps.handshakes,
        };
        Ok(HandshakeSlot {
            counts: self.0.clone(),
            key,
            id,
            kicked: Kicked::new(evicted),
            spoke,
        })
    }

    /// At `max_connections`: close a connection that has not logged in to make room for a new
    /// one, as Dovecot's login processes do when their client limit is reached. The oldest
    /// handshake that has been silent for longer than [`SILENT_GRACE`] goes first (cheapest to
    /// lose: it has cost nothing and holds nothing), else the session that has waited longest
    /// before logging in; handshakes under way, younger silent ones and logged-in sessions are
    /// never touched. `false` when there
    /// is nothing to displace (the newcomer is refused). Its permit comes back when the
    /// displaced session's task ends, moments later; the newcomer waits for it.
    ///
    /// Why (issue 9): attackers holding half-open and idle pre-login connections from many
    /// addresses, each under the per-address caps, filled `max_connections` in the soak and
    /// every legitimate client was refused until their timeouts. A mail client logs in right
    /// after the greeting, so the oldest connection still not logged in is the least likely to
    /// be one.
    pub fn make_room(&self) -> bool {
        let mut counts = lock(&self.0);
        let grace = counts.silent_grace;
        if let Some(before) = Instant::now().checked_sub(grace)
            && counts.waiting.evict_silent(before)
        {
            return true;
        }
        match counts.prelogin.pop_first() {
            Some((_, kick)) => {
                let _ = kick.send(());
                true
            }
            None => false,
        }
    }

    /// Register a session that is past its handshake and not logged in yet; it can be
    /// displaced by [`ConnLimits::make_room`] until the slot is dropped.
    pub fn prelogin(&self) -> PreloginSlot {
        let mut counts = lock(&self.0);
        let id = counts.next;
        counts.next += 1;
        let (kick, evicted) = oneshot::channel();
        counts.prelogin.insert(id, kick);
        PreloginSlot {
            counts: self.0.clone(),
            id,
            kicked: Kicked::new(evicted),
        }
    }

    /// Connections and handshakes in progress now (for tests and diagnostics).
    pub fn totals(&self) -> (usize, usize) {
        let counts = lock(&self.0);
        (counts.connections.values().sum(), counts.waiting.total())
    }
}

impl HandshakeSlot {
    /// Count this handshake against `ip` as well, once the PROXY header has named the client.
    /// On `Err` the slot is unchanged (and frees its share of the total on drop).
    pub fn attribute(&mut self, ip: IpAddr, caps: &Caps) -> Result<(), Over> {
        if self.key.is_some() {
            return Ok(());
        }
        let key = client_key(ip);
        let mut counts = lock(&self.counts);
        take(
            &mut counts.handshakes,
            key,
            caps.handshakes_per_ip,
            Over::HandshakesPerIp,
        )?;
        self.key = Some(key);
        Ok(())
    }

    /// Resolves when a newer handshake has taken this one's place at the total cap: the
    /// session then closes the connection. Pending forever otherwise.
    /// The handle through which the session reports the connection's first bytes.
    pub fn spoke(&self) -> Spoke {
        self.spoke.clone()
    }

    /// May be awaited again (each handshake step races it): once evicted, it stays resolved.
    pub async fn evicted(&mut self) {
        self.kicked.wait().await;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        release(&mut lock(&self.counts).connections, self.key);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        // Already gone from the table if it was evicted.
        counts.waiting.remove(self.id);
        if let Some(key) = self.key {
            release(&mut counts.handshakes, key);
        }
    }
}

fn lock(m: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // A poisoned lock only means another session panicked mid-update of plain counters.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take(map: &mut HashMap<IpAddr, usize>, key: IpAddr, cap: usize, over: Over) -> Result<(), Over> {
    let n = map.entry(key).or_insert(0);
    if cap != 0 && *n >= cap {
        if *n == 0 {
            map.remove(&key);
        }
        return Err(over);
    }
    *n += 1;
    Ok(())
}

fn release(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn caps(connections_per_ip: usize, handshakes: usize, handshakes_per_ip: usize) -> Caps {
        Caps {
            connections_per_ip,
            handshakes,
            handshakes_per_ip,
        }
    }

    #[test]
    fn connections_are_capped_per_address_and_freed_on_drop() {
        let limits = ConnLimits::new();
        let c = caps(2, 0, 0);
        let a = limits.connection(ip("192.0.2.1"), &c).unwrap();
        let _b = limits.connection(ip("192.0.2.1"), &c).unwrap();
        assert_eq!(
            limits.connection(ip("192.0.2.1"), &c).unwrap_err(),
            Over::ConnectionsPerIp
        );
        // Another address is not affected; the mapped form is the same address.
        let _other = limits.connection(ip("192.0.2.2"), &c).unwrap();
        assert!(limits.connection(ip("::ffff:192.0.2.1"), &c).is_err());
        drop(a);
        let _again = limits.connection(ip("::ffff:192.0.2.1"), &c).unwrap();
        assert_eq!(limits.totals().0, 3);
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let limits = ConnLimits::new();
        let c = caps(1, 0, 0);
        let _a = limits.connection(ip("2001:db8:1:2::1"), &c).unwrap();
        assert!(limits.connection(ip("2001:db8:1:2:ffff::9"), &c).is_err());
        let _b = limits.connection(ip("2001:db8:1:3::1"), &c).unwrap();
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn zero_switches_a_cap_off() {
        let limits = ConnLimits::new();
        let c = caps(0, 0, 0);
        let held: Vec<_> = (0..1000)
            .map(|_| limits.connection(ip("192.0.2.1"), &c).unwrap())
            .collect();
        let hs: Vec<_> = (0..1000)
            .map(|_| limits.handshake(Some(ip("192.0.2.1")), &c).unwrap())
            .collect();
        assert_eq!(limits.totals(), (held.len(), hs.len()));
    }

    #[test]
    fn handshakes_are_capped_per_address() {
        let limits = ConnLimits::new();
        let c = caps(0, 3, 2);
        let a = ip("192.0.2.1");
        let h1 = limits.handshake(Some(a), &c).unwrap();
        let _h2 = limits.handshake(Some(a), &c).unwrap();
        assert_eq!(
            limits.handshake(Some(a), &c).unwrap_err(),
            Over::HandshakesPerIp
        );
        let h3 = limits.handshake(Some(ip("192.0.2.2")), &c).unwrap();
        // A refused attempt took nothing; a finished handshake frees both shares.
        drop(h1);
        let _h4 = limits.handshake(Some(a), &c).unwrap();
        assert_eq!(limits.totals().1, 3);
        drop(h3);
    }

    /// Whether the slot has been evicted by now (without waiting).
    async fn is_evicted(slot: &mut HandshakeSlot) -> bool {
        tokio::select! {
            biased;
            () = slot.evicted() => true,
            () = std::future::ready(()) => false,
        }
    }

    /// A handshake slot whose connection has sent its first bytes.
    fn speaking(limits: &ConnLimits, from: &str, c: &Caps) -> HandshakeSlot {
        let slot = limits.handshake(Some(ip(from)), c).unwrap();
        slot.spoke().now();
        slot
    }

    #[tokio::test]
    async fn at_the_total_cap_the_oldest_speaking_handshake_gives_way() {
        let limits = ConnLimits::new();
        let c = caps(0, 2, 1);
        let mut first = speaking(&limits, "192.0.2.1", &c);
        let mut second = speaking(&limits, "192.0.2.2", &c);
        let _third = speaking(&limits, "192.0.2.3", &c);
        first.evicted().await;
        assert!(!is_evicted(&mut second).await);
        assert_eq!(limits.totals().1, 2);
        // The evicted one still holds its address's share until its session drops it.
        assert_eq!(
            limits.handshake(Some(ip("192.0.2.1")), &c).unwrap_err(),
            Over::HandshakesPerIp
        );
        drop(first);
        let fourth = speaking(&limits, "192.0.2.1", &c);
        second.evicted().await;
        assert_eq!(limits.totals().1, 2);
        // Speaking again changes nothing.
        fourth.spoke().now();
        assert_eq!(limits.totals().1, 2);
    }

    #[tokio::test]
    async fn silent_connections_do_not_count_against_the_total() {
        let limits = ConnLimits::new();
        let c = caps(0, 2, 100);
        // A flood that never speaks: held, nobody evicted.
        let mut flood: Vec<_> = (0..50)
            .map(|_| limits.handshake(Some(ip("198.51.100.9")), &c).unwrap())
            .collect();
        let mut client = speaking(&limits, "192.0.2.1", &c);
        for f in &mut flood {
            assert!(!is_evicted(f).await);
        }
        // Speaking ones count: the third to speak pushes out the oldest speaking one, the
        // client; the silent flood is still untouched.
        let _a = speaking(&limits, "192.0.2.2", &c);
        assert!(!is_evicted(&mut client).await);
        flood[10].spoke().now();
        assert!(is_evicted(&mut client).await);
        assert!(!is_evicted(&mut flood[0]).await);
        assert_eq!(limits.totals().1, 51);
    }

    #[tokio::test]
    async fn making_room_takes_old_silent_handshakes_then_the_oldest_prelogin_session() {
        let c = caps(0, 0, 0);
        // Silent connections within their grace are spared: the oldest pre-login session goes.
        let limits = ConnLimits::new();
        let mut young = limits.handshake(Some(ip("192.0.2.1")), &c).unwrap();
        let mut first = limits.prelogin();
        let mut second = limits.prelogin();
        assert!(limits.make_room());
        first.displaced().await;
        assert!(!is_evicted(&mut young).await);
        assert!(limits.make_room());
        second.displaced().await;
        assert!(!limits.make_room(), "nothing left to displace");
        drop(young);
        // Past their grace, silent handshakes go first, oldest first; speaking ones never.
        let limits = ConnLimits::with_silent_grace(Duration::ZERO);
        let mut old = limits.handshake(Some(ip("192.0.2.1")), &c).unwrap();
        let talking = limits.handshake(Some(ip("192.0.2.2")), &c).unwrap();
        talking.spoke().now();
        let mut waiting = limits.prelogin();
        assert!(limits.make_room());
        assert!(is_evicted(&mut old).await);
        assert!(limits.make_room());
        waiting.displaced().await;
        assert!(!limits.make_room());
        drop(talking);
    }

    #[test]
    fn a_proxied_handshake_is_attributed_once_the_client_is_known() {
        let limits = ConnLimits::new();
        let c = caps(0, 10, 1);
        let client = ip("192.0.2.7");
        let mut first = limits.handshake(None, &c).unwrap();
        let mut second = limits.handshake(None, &c).unwrap();
        first.attribute(client, &c).unwrap();
        assert_eq!(
            second.attribute(client, &c).unwrap_err(),
            Over::HandshakesPerIp
        );
        second.attribute(ip("192.0.2.8"), &c).unwrap();
        drop(first);
        drop(second);
        assert_eq!(limits.totals(), (0, 0));
        let mut third = limits.handshake(None, &c).unwrap();
        third.attribute(client, &c).unwrap();
    }
}

//! The read model: what the store last committed about every device — its row, its ports and
//! its pending/charging orders — held in memory so that device, device-list and active-order
//! reads need no database round trip.
//!
//! The store stays the source of truth. Every path that writes a device's rows brackets the
//! write with [`ReadModel::begin`] … [`ReadModel::refresh`] + [`WriteGuard::finish`]:
//!
//! * `begin` marks the device *being written*; while it is, reads of that device (and the
//!   device list) answer `Unknown` and the caller reads the store instead — so between a commit
//!   and its refresh nobody is answered from the pre-commit state;
//! * after the commit, `refresh` re-reads the device's rows from the store and installs them
//!   (never before the commit; an install never replaces a newer one: each refresh takes a
//!   ticket before it reads, and an older ticket loses);
//! * a guard dropped without `finish` (an error, a cancelled request) or a failed refresh marks
//!   the device *stale*: it is read from the store until [`ReadModel::repair`] (every sweep)
//!   reloads it.
//!
//! The live, per-connection fields (online, last frame, remote address, firmware, signal) come
//! from the gateway's live registry as before (`build_view` overlays them); this model holds
//! only committed rows, which is why it is keyed separately from the registry: it also holds
//! every device that is not connected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::{DeviceRow, DeviceSnapshot, OrderRow, PortRow, Store, StoreError};

/// A device as the store holds it, with the (port, active order) pairs its view shows — the
/// three parts [`Store::device_with_ports`] returns.
pub type DeviceParts = (DeviceRow, Vec<PortRow>, Vec<(i64, String)>);

/// One device of a list page: from memory, or (being written right now) to read from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum PageItem {
    Memory(Held),
    Store(String),
}

/// A device as this model holds it. `ticket` names the install: two `Held` of one device with
/// the same ticket hold the same committed rows (the HTTP layer caches rendered views by it).
/// Equality compares the rows, not the ticket.
#[derive(Debug, Clone)]
pub struct Held {
    pub ticket: u64,
    snap: Arc<DeviceSnapshot>,
    pairs: Arc<Vec<(i64, String)>>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.snap == other.snap && self.pairs == other.pairs
    }
}

impl Held {
    pub fn device_id(&self) -> &str {
        &self.snap.device.device_id
    }

    /// The rows, as [`Store::device_with_ports`] returns them.
    pub fn parts(&self) -> DeviceParts {
        (
            self.snap.device.clone(),
            self.snap.ports.clone(),
            self.pairs.as_ref().clone(),
        )
    }
}

/// An answer from memory, or `Unknown` when the store must answer (not loaded yet, the device
/// is being written, or its entry is stale).
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    Absent,
    Unknown,
}

#[derive(Debug)]
struct Entry {
    snap: Arc<DeviceSnapshot>,
    pairs: Arc<Vec<(i64, String)>>,
    ticket: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The full rebuild from the store has succeeded.
    loaded: bool,
    devices: BTreeMap<String, Entry>,
    /// Active order number → its device.
    orders: HashMap<String, String>,
    /// Devices with a write in flight (count of writers).
    writing: HashMap<String, u32>,
    /// Devices whose entry may not match the store until a refresh with a later ticket than
    /// the one recorded here reloads them.
    stale: HashMap<String, u64>,
}

impl Inner {
    fn trusted(&self, device_id: &str) -> bool {
        self.loaded && !self.writing.contains_key(device_id) && !self.stale.contains_key(device_id)
    }

    fn install(&mut self, snap: DeviceSnapshot, ticket: u64) {
        let id = snap.device.device_id.clone();
        if self.devices.get(&id).is_some_and(|e| e.ticket > ticket) {
            return;
        }
        if let Some(old) = self.devices.get(&id) {
            for o in &old.snap.active {
                self.orders.remove(&o.order_no);
            }
        }
        for o in &snap.active {
            self.orders.insert(o.order_no.clone(), id.clone());
        }
        let pairs = Arc::new(pairs_of(&snap));
        self.devices.insert(
            id,
            Entry {
                snap: Arc::new(snap),
                pairs,
                ticket,
            },
        );
    }
}

/// The (port, order) pairs of a device's view, as [`Store::device_with_ports`] computes them:
/// each reported port with its active order; without reported ports, every active order when
/// the device has a port count.
fn pairs_of(s: &DeviceSnapshot) -> Vec<(i64, String)> {
    if s.ports.is_empty() {
        if s.device.port_count > 0 {
            return s
                .active
                .iter()
                .map(|o| (o.port_no, o.order_no.clone()))
                .collect();
        }
        return Vec::new();
    }
    s.ports
        .iter()
        .filter_map(|p| {
            s.active
                .iter()
                .find(|o| o.port_no == p.port_no)
                .map(|o| (p.port_no, o.order_no.clone()))
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct ReadModel {
    inner: RwLock<Inner>,
    tickets: AtomicU64,
    /// The database is shared with other gateway instances (PostgreSQL, issue 17): their
    /// writes never pass through this model, so every answer comes from the store.
    shared: std::sync::atomic::AtomicBool,
}

/// A write in flight for some devices (see the module docs).
#[must_use = "finish the guard after refreshing, or the devices are marked stale"]
pub struct WriteGuard<'a> {
    model: &'a ReadModel,
    ids: Vec<String>,
    finished: bool,
}

impl WriteGuard<'_> {
    /// The write is committed (or failed) and its devices were refreshed.
    pub fn finish(mut self) {
        self.finished = true;
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mark = self.model.tickets.load(Ordering::SeqCst);
        let mut inner = self.model.write();
        for id in &self.ids {
            if let Some(n) = inner.writing.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    inner.writing.remove(id);
                }
            }
            if !self.finished {
                inner.stale.insert(id.clone(), mark);
            }
        }
    }
}

impl ReadModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve nothing from memory: other instances write the same database (see `shared`).
    pub fn set_shared(&self) {
        self.shared.store(true, Ordering::SeqCst);
    }

    fn is_shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `ids` as being written; call before the write starts.
    pub fn begin<I, S>(&self, ids: I) -> WriteGuard<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut ids: Vec<String> = ids.into_iter().map(Into::into).collect();
        ids.sort();
        ids.dedup();
        let mut inner = self.write();
        for id in &ids {
            *inner.writing.entry(id.clone()).or_insert(0) += 1;
        }
        WriteGuard {
            model: self,
            ids,
            finished: false,
        }
    }

    /// Re-reads `ids` from the store and installs what it holds; call after the commit. On a
    /// failure the devices are marked stale (read from the store until repaired).
    pub async fn refresh(&self, store: &Store, ids: &[String]) {
        // Nothing is served from memory on a shared database: no reload either.
        if ids.is_empty() || self.is_shared() {
            return;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        match store.device_snapshots(Some(ids)).await {
            Ok(snaps) => {
                let mut inner = self.write();
                let mut found = HashSet::with_capacity(snaps.len());
                for s in snaps {
                    found.insert(s.device.device_id.clone());
                    inner.install(s, ticket);
                }
                for id in ids {
                    // Unknown to the store: nothing to hold (devices are never deleted).
                    let known = found.contains(id) || !inner.devices.contains_key(id);
                    if known && inner.stale.get(id).is_some_and(|&m| ticket > m) {
                        inner.stale.remove(id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, devices = ids.len(), "read model refresh failed; those devices are read from the store until repaired");
                let mark = self.tickets.load(Ordering::SeqCst);
                let mut inner = self.write();
                for id in ids {
                    inner.stale.insert(id.clone(), mark);
                }
            }
        }
    }

    /// `begin` + `refresh` + `finish` around one write.
    pub async fn around<T, Fut>(&self, store: &Store, ids: &[String], write: Fut) -> T
    where
        Fut: std::future::Future<Output = T>,
    {
        let guard = self.begin(ids.iter().cloned());
        let out = write.await;
        self.refresh(store, guard.ids()).await;
        guard.finish();
        out
    }

    /// Loads every device from the store (start-up); until it has succeeded every read goes
    /// to the store.
    pub async fn rebuild(&self, store: &Store) -> Result<usize, StoreError> {
        if self.is_shared() {
            return Ok(0);
        }
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let snaps = store.device_snapshots(None).await?;
        let n = snaps.len();
        let mut inner = self.write();
        for s in snaps {
            inner.install(s, ticket);
        }
        inner.stale.retain(|_, m| *m >= ticket);
        inner.loaded = true;
        Ok(n)
    }

    /// Reloads stale devices (and retries a failed rebuild); the sweeper calls it.
    pub async fn repair(&self, store: &Store) {
        let (loaded, stale): (bool, Vec<String>) = {
            let inner = self.read();
            (inner.loaded, inner.stale.keys().cloned().collect())
        };
        if !loaded {
            if let Err(e) = self.rebuild(store).await {
                tracing::warn!(error = %e, "read model rebuild failed; reads go to the store");
            }
        } else if !stale.is_empty() {
            self.refresh(store, &stale).await;
        }
    }

    /// Whether every answer can come from memory right now (loaded, nothing stale).
    pub fn is_loaded(&self) -> bool {
        let inner = self.read();
        inner.loaded && inner.stale.is_empty()
    }

    /// A device's parts as the store holds them.
    pub fn device(&self, device_id: &str) -> Lookup<DeviceParts> {
        match self.held(device_id) {
            Lookup::Found(h) => Lookup::Found(h.parts()),
            Lookup::Absent => Lookup::Absent,
            Lookup::Unknown => Lookup::Unknown,
        }
    }

    /// A device as held, without copying its rows.
    pub fn held(&self, device_id: &str) -> Lookup<Held> {
        if self.is_shared() {
            return Lookup::Unknown;
        }
        let inner = self.read();
        if !inner.trusted(device_id) {
            return Lookup::Unknown;
        }
        match inner.devices.get(device_id) {
            Some(e) => Lookup::Found(held(e)),
            None => Lookup::Absent,
        }
    }

    /// A page of devices ordered by ID (optionally only those the store holds online) and the
    /// count of all matches, as [`Store::devices`] answers. A device on the page that is being
    /// written is [`PageItem::Store`]: read it from the store. `None` (read the whole page from
    /// the store) while the model is not loaded or has stale entries, while a device it does
    /// not hold yet is being written (it may join the list), and, with an `online` filter, while
    /// any device is being written (its `online` may change).
    pub fn page(&self, online: Option<bool>, page: u32, size: u32) -> Option<(Vec<PageItem>, i64)> {
        if self.is_shared() {
            return None;
        }
        let inner = self.read();
        if !inner.loaded || !inner.stale.is_empty() {
            return None;
        }
        if !inner.writing.is_empty()
            && (online.is_some()
                || inner
                    .writing
                    .keys()
                    .any(|id| !inner.devices.contains_key(id)))
        {
            return None;
        }
        let offset = (page.saturating_sub(1) as usize).saturating_mul(size as usize);
        let matches = |e: &(&String, &Entry)| online.is_none_or(|on| e.1.snap.device.online == on);
        let total = match online {
            None => inner.devices.len(),
            Some(_) => inner.devices.iter().filter(matches).count(),
        };
        let items = inner
            .devices
            .iter()
            .filter(matches)
            .skip(offset)
            .take(size as usize)
            .map(|(id, e)| {
                if inner.writing.contains_key(id) {
                    PageItem::Store(id.clone())
                } else {
                    PageItem::Memory(held(e))
                }
            })
            .collect();
        Some((items, total as i64))
    }

    /// An active (pending or charging) order; `Unknown` for any other order number (settled
    /// or unknown orders are the store's) or while its device is being written.
    pub fn active_order(&self, order_no: &str) -> Option<OrderRow> {
        if self.is_shared() {
            return None;
        }
        let inner = self.read();
        let device_id = inner.orders.get(order_no)?;
        if !inner.trusted(device_id) {
            return None;
        }
        inner
            .devices
            .get(device_id)?
            .snap
            .active
            .iter()
            .find(|o| o.order_no == order_no)
            .cloned()
    }
}

fn held(e: &Entry) -> Held {
    Held {
        ticket: e.ticket,
        snap: e.snap.clone(),
        pairs: e.pairs.clone(),
    }
}

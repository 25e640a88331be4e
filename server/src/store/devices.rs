//! Devices and ports.

use std::time::Instant;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::*;

// Rows

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub device_id: String,
    pub protocol: String,
    pub online: bool,
    pub last_seen_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub remote_addr: Option<String>,
    pub firmware: Option<String>,
    pub signal: Option<i64>,
    pub port_count: i64,
}

/// Devices with their ports and `(port_no, order_no)` of their active orders.
pub type DevicePage = Vec<(DeviceRow, Vec<PortRow>, Vec<(i64, String)>)>;

#[derive(Debug, Clone, PartialEq)]
pub struct PortRow {
    pub device_id: String,
    pub port_no: i64,
    pub socket_no: Option<i64>,
    pub hole: Option<i64>,
    pub status: String,
    pub power_dw: i64,
    pub reported_status: Option<String>,
}

pub(super) fn device_from_row(r: &AnyRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: r.try_get("device_id")?,
        protocol: r.try_get("protocol")?,
        online: r.try_get::<i64, _>("online")? != 0,
        last_seen_at: r.try_get("last_seen_at")?,
        connected_at: r.try_get("connected_at")?,
        remote_addr: r.try_get("remote_addr")?,
        firmware: r.try_get("firmware")?,
        signal: r.try_get("signal")?,
        port_count: r.try_get("port_count")?,
    })
}

fn port_from_row(r: &AnyRow) -> Result<PortRow> {
    Ok(PortRow {
        device_id: r.try_get("device_id")?,
        port_no: r.try_get("port_no")?,
        socket_no: r.try_get("socket_no")?,
        hole: r.try_get("hole")?,
        status: r.try_get("status")?,
        power_dw: r.try_get("power_dw")?,
        reported_status: r.try_get("reported_status")?,
    })
}

pub(super) const DEVICE_COLS: &str =
    "device_id, protocol, online, last_seen_at, connected_at, remote_addr, \
    firmware, signal, port_count";

pub(super) const PORT_COLS: &str =
    "device_id, port_no, socket_no, hole, status, power_dw, reported_status";

/// A device that identified itself on a connection.
#[derive(Debug, Clone)]
pub struct DeviceOnline {
    pub device_id: String,
    pub protocol: String,
    pub remote_addr: String,
    pub firmware: Option<String>,
    pub iccid: Option<String>,
    pub signal: Option<i64>,
    /// Unix seconds.
    pub now: i64,
}

pub(super) const UPDATE_DEVICE_INFO: &str =
    "UPDATE devices SET firmware = COALESCE($2, firmware), \
     signal = COALESCE($3, signal), \
     port_count = CASE WHEN $4 IS NULL OR $4 < port_count THEN port_count ELSE $4 END, updated_at = $5 \
     WHERE device_id = $1";

pub(super) async fn device_online_tx(tx: &mut Tx, d: &DeviceOnline) -> Result<bool> {
    let was_online: Option<i64> = sqlx::query("SELECT online FROM devices WHERE device_id = $1")
        .bind(&d.device_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get("online"))
        .transpose()?;
    let existed = was_online.is_some();
    sqlx::query(
        "INSERT INTO devices (device_id, protocol, online, last_seen_at, connected_at, \
         remote_addr, firmware, iccid, signal, port_count, created_at, updated_at) \
         VALUES ($1, $2, 1, $3, $3, $4, $5, $6, $7, 0, $3, $3) \
         ON CONFLICT (device_id) DO UPDATE SET protocol = $2, online = 1, last_seen_at = $3, \
         connected_at = $3, remote_addr = $4, firmware = COALESCE($5, devices.firmware), \
         iccid = COALESCE($6, devices.iccid), signal = COALESCE($7, devices.signal), \
         updated_at = $3",
    )
    .bind(&d.device_id)
    .bind(&d.protocol)
    .bind(d.now)
    .bind(&d.remote_addr)
    .bind(d.firmware.clone())
    .bind(d.iccid.clone())
    .bind(d.signal)
    .execute(&mut **tx)
    .await?;
    let now_ms = d.now * 1000;
    if !existed {
        insert_event(
            tx,
            &Event {
                event_type: "device.registered",
                device_id: d.device_id.clone(),
                order_no: None,
                data: serde_json::json!({"protocol": d.protocol}),
            },
            now_ms,
        )
        .await?;
    }
    // A device back within the offline threshold (a reconnect, a gateway restart) never went
    // offline: no second `device.online`.
    if was_online != Some(1) {
        insert_event(
            tx,
            &Event {
                event_type: "device.online",
                device_id: d.device_id.clone(),
                order_no: None,
                data: serde_json::json!({"remote_addr": d.remote_addr, "protocol": d.protocol}),
            },
            now_ms,
        )
        .await?;
    }
    Ok(!existed)
}

pub(super) async fn device_offline_tx(
    tx: &mut Tx,
    device_id: &str,
    last_seen_at: i64,
    now: i64,
) -> Result<()> {
    let n = sqlx::query(
        "UPDATE devices SET online = 0, last_seen_at = $2, updated_at = $3 \
         WHERE device_id = $1 AND online = 1",
    )
    .bind(device_id)
    .bind(last_seen_at)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n == 0 {
        // Already offline (or unknown): one `device.offline` per spell.
        return Ok(());
    }
    sqlx::query("UPDATE ports SET status = 'offline', power_dw = 0 WHERE device_id = $1")
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    // Orders charging on a device that went away may end while it is offline.
    sqlx::query(
        "UPDATE orders SET was_offline = 1 WHERE device_id = $1 AND status IN ('pending', 'charging')",
    )
    .bind(device_id)
    .execute(&mut **tx)
    .await?;
    insert_event(
        tx,
        &Event {
            event_type: "device.offline",
            device_id: device_id.to_string(),
            order_no: None,
            data: serde_json::json!({"last_seen_at": last_seen_at}),
        },
        now * 1000,
    )
    .await?;
    Ok(())
}

impl Store {
    /// A device connected (or identified itself): create or refresh it, online, with its
    /// `device.registered` (first time) and `device.online` events. Returns whether it is new.
    pub async fn device_online(&self, d: &DeviceOnline) -> Result<bool> {
        let started = Instant::now();
        let mut tx = self.begin().await?;
        let new = device_online_tx(&mut tx, d).await?;
        tx.commit().await?;
        self.observe(started);
        Ok(new)
    }

    /// Writes one event on its own (alarms and other events without a state change).
    pub async fn record_event(&self, ev: &Event, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_event(&mut tx, ev, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn device_exists(&self, device_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Firmware, signal and port count learnt from registration or heartbeat frames.
    pub async fn update_device_info(
        &self,
        device_id: &str,
        firmware: Option<&str>,
        signal: Option<i64>,
        port_count: Option<i64>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(UPDATE_DEVICE_INFO)
            .bind(device_id)
            .bind(firmware.map(str::to_string))
            .bind(signal)
            .bind(port_count)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A device went away: offline, its ports offline, its active orders marked as having
    /// lived through an offline spell, and a `device.offline` event.
    pub async fn device_offline(&self, device_id: &str, last_seen_at: i64, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        device_offline_tx(&mut tx, device_id, last_seen_at, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Devices the database holds online, with when they were last seen (Unix s): at start-up,
    /// those a previous run left connected. They stay online for the offline threshold so that
    /// piles back within it after a restart produce no offline/online pair.
    pub async fn devices_marked_online(&self) -> Result<Vec<(String, String, Option<i64>)>> {
        let rows =
            sqlx::query("SELECT device_id, protocol, last_seen_at FROM devices WHERE online = 1")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device_id")?,
                    r.try_get("protocol")?,
                    r.try_get("last_seen_at")?,
                ))
            })
            .collect()
    }

    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRow>> {
        let started = Instant::now();
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE device_id = $1"
        ))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        self.observe(started);
        row.as_ref().map(device_from_row).transpose()
    }

    /// A page of devices and the count of all matches.
    pub async fn devices(
        &self,
        online: Option<bool>,
        page: u32,
        size: u32,
    ) -> Result<(Vec<DeviceRow>, i64)> {
        let started = Instant::now();
        let filter = match online {
            Some(true) => "WHERE online = 1",
            Some(false) => "WHERE online = 0",
            None => "",
        };
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM devices {filter}"))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(size);
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices {filter} ORDER BY device_id LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(size))
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let rows = rows.iter().map(device_from_row).collect::<Result<_>>()?;
        Ok((rows, total))
    }

    /// A page of devices, each with its ports and active orders, and the count of all
    /// matches — in one query (#13; it was two per device): the page's ports and the page's
    /// active orders come as rows of one `UNION ALL`, the total in a column.
    pub async fn devices_with_ports(
        &self,
        online: Option<bool>,
        page: u32,
        size: u32,
    ) -> Result<(DevicePage, i64)> {
        let started = Instant::now();
        let filter = match online {
            Some(true) => "WHERE online = 1",
            Some(false) => "WHERE online = 0",
            None => "",
        };
        let offset = i64::from(page.saturating_sub(1)) * i64::from(size);
        let cols = "pg.device_id, pg.protocol, pg.online, pg.last_seen_at, pg.connected_at, \
            pg.remote_addr, pg.firmware, pg.signal, pg.port_count, pg.total";
        let rows = sqlx::query(&format!(
            "WITH pg AS (SELECT {DEVICE_COLS}, (SELECT COUNT(*) FROM devices {filter}) AS total \
                 FROM devices {filter} ORDER BY device_id LIMIT $1 OFFSET $2) \
             SELECT {cols}, CAST(0 AS BIGINT) AS kind, p.port_no AS p_port_no, p.socket_no AS p_socket_no, \
                 p.hole AS p_hole, p.status AS p_status, p.power_dw AS p_power_dw, \
                 p.reported_status AS p_reported, CAST(NULL AS TEXT) AS o_order_no \
                 FROM pg LEFT JOIN ports p ON p.device_id = pg.device_id \
             UNION ALL \
             SELECT {cols}, CAST(1 AS BIGINT) AS kind, o.port_no AS p_port_no, CAST(NULL AS BIGINT), \
                 CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS BIGINT), \
                 CAST(NULL AS TEXT), o.order_no AS o_order_no \
                 FROM pg JOIN orders o ON o.device_id = pg.device_id \
                 AND o.status IN ('pending', 'charging') \
             ORDER BY 1, 11, 12"
        ))
        .bind(i64::from(size))
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let total = match rows.first() {
            Some(r) => r.try_get("total")?,
            None => sqlx::query(&format!("SELECT COUNT(*) AS n FROM devices {filter}"))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        };
        let mut out: DevicePage = Vec::new();
        for r in &rows {
            let device_id: String = r.try_get("device_id")?;
            if out.last().is_none_or(|(d, _, _)| d.device_id != device_id) {
                out.push((device_from_row(r)?, Vec::new(), Vec::new()));
            }
            let (_, ports, active) = out.last_mut().expect("pushed above");
            let Some(port_no) = r.try_get::<Option<i64>, _>("p_port_no")? else {
                continue;
            };
            if r.try_get::<i64, _>("kind")? == 1 {
                active.push((port_no, r.try_get("o_order_no")?));
                continue;
            }
            ports.push(PortRow {
                device_id,
                port_no,
                socket_no: r.try_get("p_socket_no")?,
                hole: r.try_get("p_hole")?,
                status: r
                    .try_get::<Option<String>, _>("p_status")?
                    .unwrap_or_default(),
                power_dw: r.try_get::<Option<i64>, _>("p_power_dw")?.unwrap_or(0),
                reported_status: r.try_get("p_reported")?,
            });
        }
        Ok((out, total))
    }

    /// A device with its ports and each port's active order, in one round trip (the API's
    /// most frequent read). `None` when the device is unknown.
    pub async fn device_with_ports(
        &self,
        device_id: &str,
    ) -> Result<Option<(DeviceRow, Vec<PortRow>, Vec<(i64, String)>)>> {
        let started = Instant::now();
        let rows = sqlx::query(
            "SELECT d.device_id, d.protocol, d.online, d.last_seen_at, d.connected_at, \
             d.remote_addr, d.firmware, d.signal, d.port_count, p.port_no AS p_port_no, \
             p.socket_no AS p_socket_no, p.hole AS p_hole, p.status AS p_status, \
             p.power_dw AS p_power_dw, p.reported_status AS p_reported, \
             (SELECT o.order_no FROM orders o WHERE o.device_id = d.device_id \
              AND o.port_no = p.port_no AND o.status IN ('pending', 'charging') LIMIT 1) AS p_order_no \
             FROM devices d LEFT JOIN ports p ON p.device_id = d.device_id \
             WHERE d.device_id = $1 ORDER BY p.port_no",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let device = device_from_row(first)?;
        let mut ports = Vec::with_capacity(rows.len());
        let mut active = Vec::new();
        for r in &rows {
            let Some(port_no) = r.try_get::<Option<i64>, _>("p_port_no")? else {
                continue;
            };
            ports.push(PortRow {
                device_id: device.device_id.clone(),
                port_no,
                socket_no: r.try_get("p_socket_no")?,
                hole: r.try_get("p_hole")?,
                status: r
                    .try_get::<Option<String>, _>("p_status")?
                    .unwrap_or_default(),
                power_dw: r.try_get::<Option<i64>, _>("p_power_dw")?.unwrap_or(0),
                reported_status: r.try_get("p_reported")?,
            });
            if let Some(order_no) = r.try_get::<Option<String>, _>("p_order_no")? {
                active.push((port_no, order_no));
            }
        }
        if ports.is_empty() && device.port_count > 0 {
            // Ports not reported yet: the view is built from the port count.
            active = self
                .active_orders_of(device_id)
                .await?
                .into_iter()
                .map(|o| (o.port_no, o.order_no))
                .collect();
        }
        Ok(Some((device, ports, active)))
    }

    pub async fn ports(&self, device_id: &str) -> Result<Vec<PortRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PORT_COLS} FROM ports WHERE device_id = $1 ORDER BY port_no"
        ))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(port_from_row).collect()
    }
}

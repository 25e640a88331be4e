//! Bulk reads for the in-memory read model (`crate::service::read`): every device with its
//! ports and active orders, or those of a set of devices, in three statements.

use std::collections::HashMap;
use std::time::Instant;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::devices::{device_from_row, DEVICE_COLS, PORT_COLS};
use super::orders::{order_from_row, ORDER_COLS};
use super::*;

/// What the store holds for one device: its row, its ports (by port number) and its pending or
/// charging orders (by port number) — the same rows [`Store::device_with_ports`] and
/// [`Store::active_orders_of`] return.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSnapshot {
    pub device: DeviceRow,
    pub ports: Vec<PortRow>,
    pub active: Vec<OrderRow>,
}

fn port_of(r: &AnyRow) -> Result<PortRow> {
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

impl Store {
    /// Snapshots of `ids` (every device when `None`); unknown IDs are absent from the answer.
    pub async fn device_snapshots(&self, ids: Option<&[String]>) -> Result<Vec<DeviceSnapshot>> {
        if ids.is_some_and(|i| i.is_empty()) {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let filter = |col: &str, and: bool| match ids {
            None => String::new(),
            Some(ids) => {
                let marks: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
                format!(
                    "{} {col} IN ({})",
                    if and { "AND" } else { "WHERE" },
                    marks.join(", ")
                )
            }
        };
        let devices = self
            .fetch_for(
                &format!(
                    "SELECT {DEVICE_COLS} FROM devices {} ORDER BY device_id",
                    filter("device_id", false)
                ),
                ids,
            )
            .await?;
        let ports = self
            .fetch_for(
                &format!(
                    "SELECT {PORT_COLS} FROM ports {} ORDER BY device_id, port_no",
                    filter("device_id", false)
                ),
                ids,
            )
            .await?;
        let orders = self
            .fetch_for(
                &format!(
                    "SELECT {ORDER_COLS} FROM orders WHERE status IN ('pending', 'charging') {} \
                     ORDER BY device_id, port_no",
                    filter("device_id", true)
                ),
                ids,
            )
            .await?;
        self.observe(started);
        let mut out: Vec<DeviceSnapshot> = Vec::with_capacity(devices.len());
        let mut at: HashMap<String, usize> = HashMap::with_capacity(devices.len());
        for r in &devices {
            let device = device_from_row(r)?;
            at.insert(device.device_id.clone(), out.len());
            out.push(DeviceSnapshot {
                device,
                ports: Vec::new(),
                active: Vec::new(),
            });
        }
        for r in &ports {
            let p = port_of(r)?;
            if let Some(&i) = at.get(&p.device_id) {
                out[i].ports.push(p);
            }
        }
        for r in &orders {
            let o = order_from_row(r)?;
            if let Some(&i) = at.get(&o.device_id) {
                out[i].active.push(o);
            }
        }
        Ok(out)
    }

    async fn fetch_for(&self, sql: &str, ids: Option<&[String]>) -> Result<Vec<AnyRow>> {
        let mut q = sqlx::query(sql);
        for id in ids.unwrap_or_default() {
            q = q.bind(id.clone());
        }
        Ok(q.fetch_all(&self.pool).await?)
    }
}

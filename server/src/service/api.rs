//! The API side: charge, stop, query, locate.

use pile_api::OrderStatus;

use super::{command_of, Result, Service, ServiceError};
use crate::core::{device_order_ref, Command, CommandSpec};
use crate::domain::{self, ChargeSpec, EndReason, OrderEvent, StopCause};
use crate::metrics as m;
use crate::store::{CommandAnswer, CreateOutcome, NewCommand, NewOrder, OrderRow};

/// A fresh order number for requests without one.
pub fn new_order_no(now_ms: i64) -> String {
    let rand: u32 = rand::random();
    format!("PK{now_ms}{rand:08x}")
}

impl Service {
    /// Creates (or returns, for a repeated `order_no` on the same device and port) an order
    /// and queues its start command, handing it to the device's session when it is connected.
    pub async fn charge(
        &self,
        device_id: &str,
        spec: &ChargeSpec,
        order_no: Option<String>,
        queue_if_offline: bool,
    ) -> Result<OrderRow> {
        let device = self
            .known_device(device_id)
            .await?
            .ok_or_else(|| ServiceError::DeviceNotFound(device_id.to_string()))?;
        if let Some(no) = &order_no {
            if let Some(existing) = self.store.order(no).await? {
                return same_order(existing, device_id, spec.port_no);
            }
        }
        if device.port_count > 0 && i64::from(spec.port_no) > device.port_count {
            return Err(domain::FieldError::new(
                "port_no",
                format!("must be between 1 and {}", device.port_count),
            )
            .into());
        }
        if !queue_if_offline && !self.gateway.is_connected(device_id) {
            return Err(ServiceError::Offline(device_id.to_string()));
        }
        let now_ms = self.clock.now_ms();
        let order_no = order_no.unwrap_or_else(|| new_order_no(now_ms));
        let device_ref = hex::encode(device_order_ref(&order_no));
        let command = CommandSpec::Start {
            order_no: order_no.clone(),
            port_no: spec.port_no,
            charge_mode: spec.mode.code(),
            duration_sec: spec.duration_sec,
            energy_wh: spec.energy_wh,
            amount: spec.amount,
            price_per_kwh: spec.price_per_kwh,
            service_fee: spec.service_fee,
            device_ref: device_ref.clone(),
        };
        let new = NewOrder {
            order_no: order_no.clone(),
            device_id: device_id.to_string(),
            port_no: i64::from(spec.port_no),
            charge_mode: i64::from(spec.mode.code()),
            target_duration: spec.duration_sec,
            target_energy_wh: spec.energy_wh,
            amount: spec.amount,
            price_per_kwh: spec.price_per_kwh,
            service_fee: spec.service_fee,
            // AP3000 carries the order number the gateway chose; a BKV device names its
            // charge by a business number learnt from its reply or its reports.
            device_ref: (device.protocol == "ap3000").then_some(device_ref),
            now_ms,
            expires_at_ms: now_ms + self.timings.command_ttl.as_millis() as i64,
            command: command.name().to_string(),
            command_payload: serde_json::to_string(&command)
                .map_err(|e| ServiceError::Conflict(e.to_string()))?,
        };
        match self.store.create_order(&new).await? {
            CreateOutcome::Existing(order) => same_order(order, device_id, spec.port_no),
            CreateOutcome::Created { order, command_id } => {
                metrics::counter!(m::ORDERS_CREATED).increment(1);
                let how = self.gateway.submit(
                    device_id,
                    Command {
                        id: command_id,
                        spec: command,
                        sent_before: false,
                        first_sent_at_ms: None,
                    },
                );
                tracing::info!(%device_id, order_no = %order.order_no, port_no = spec.port_no, ?how, "order created");
                Ok(order)
            }
        }
    }

    /// Stops the open order on a port. A pending order whose start never reached the device
    /// is cancelled at once (reason 3); otherwise a durable stop goes to the device and the
    /// order settles with reason 3 when it reports the end (a pending order whose start may
    /// have reached it is cancelled when the device answers the stop).
    pub async fn stop(
        &self,
        device_id: &str,
        port_no: u32,
        order_no: Option<&str>,
    ) -> Result<OrderRow> {
        if self.known_device(device_id).await?.is_none() {
            return Err(ServiceError::DeviceNotFound(device_id.to_string()));
        }
        let active = self
            .store
            .active_orders_of(device_id)
            .await?
            .into_iter()
            .find(|o| o.port_no == i64::from(port_no))
            .ok_or_else(|| {
                ServiceError::Conflict(format!("no order is running on port {port_no}"))
            })?;
        if let Some(no) = order_no {
            if no != active.order_no {
                return Err(ServiceError::Conflict(format!(
                    "order {no} is not running on port {port_no}"
                )));
            }
        }
        let now_ms = self.clock.now_ms();
        if active.status == OrderStatus::Pending {
            let start_written = self
                .store
                .commands_of_order(&active.order_no)
                .await?
                .iter()
                .any(|c| c.command == "start" && c.attempts > 0);
            if !start_written {
                let t = domain::transition(active.status, OrderEvent::Cancelled)
                    .map_err(|e| ServiceError::Conflict(e.to_string()))?;
                self.store
                    .close_order(
                        &active.order_no,
                        device_id,
                        t,
                        EndReason::RemoteStop.code(),
                        now_ms,
                        None::<&CommandAnswer>,
                    )
                    .await?;
                tracing::info!(%device_id, order_no = %active.order_no, "pending order stopped before its start went out: cancelled");
                return self.order_now(&active.order_no).await;
            }
        }
        let spec = CommandSpec::Stop {
            order_no: active.order_no.clone(),
            port_no,
            device_ref: active.device_ref.clone().unwrap_or_default(),
        };
        let stop = NewCommand {
            device_id: device_id.to_string(),
            order_no: Some(active.order_no.clone()),
            port_no: Some(i64::from(port_no)),
            command: "stop",
            payload: serde_json::to_string(&spec)
                .map_err(|e| ServiceError::Conflict(e.to_string()))?,
            now_ms,
            // A stop is never silently lost: it waits for the device as long as its order
            // is open (it is superseded when the order closes).
            expires_at_ms: None,
        };
        if let Some(id) = self
            .store
            .request_stop(&active.order_no, StopCause::Api, &stop)
            .await?
        {
            let how = self.gateway.submit(
                device_id,
                Command {
                    id,
                    spec,
                    sent_before: false,
                    first_sent_at_ms: None,
                },
            );
            tracing::info!(%device_id, order_no = %active.order_no, ?how, "stop requested");
        }
        self.order_now(&active.order_no).await
    }

    async fn order_now(&self, order_no: &str) -> Result<OrderRow> {
        self.store
            .order(order_no)
            .await?
            .ok_or_else(|| ServiceError::OrderNotFound(order_no.to_string()))
    }

    /// Sends a command without an order (a port query, a locate) to a connected device;
    /// returns its ID. Such a command is only worth something now: an offline device is a 503,
    /// not a queue.
    pub async fn device_command(&self, device_id: &str, spec: CommandSpec) -> Result<i64> {
        if self.known_device(device_id).await?.is_none() {
            return Err(ServiceError::DeviceNotFound(device_id.to_string()));
        }
        if !self.gateway.is_connected(device_id) {
            return Err(ServiceError::Offline(device_id.to_string()));
        }
        let now_ms = self.clock.now_ms();
        let id = self
            .store
            .queue_command(&NewCommand {
                device_id: device_id.to_string(),
                order_no: None,
                port_no: spec.port_no().map(i64::from),
                command: spec.name(),
                payload: serde_json::to_string(&spec)
                    .map_err(|e| ServiceError::Conflict(e.to_string()))?,
                now_ms,
                expires_at_ms: Some(now_ms + self.timings.command_ttl.as_millis() as i64),
            })
            .await?;
        if let Some(row) = self.store.command(id).await? {
            if let Some(cmd) = command_of(&row) {
                self.gateway.submit(device_id, cmd);
            }
        }
        Ok(id)
    }
}

/// A client's `order_no` seen again: the same order back when it is for the same device and
/// port (idempotent retry), else a conflict — never somebody else's order.
fn same_order(existing: OrderRow, device_id: &str, port_no: u32) -> Result<OrderRow> {
    if existing.device_id == device_id && existing.port_no == i64::from(port_no) {
        Ok(existing)
    } else {
        Err(ServiceError::Conflict(format!(
            "order_no {} is already used for another device or port",
            existing.order_no
        )))
    }
}

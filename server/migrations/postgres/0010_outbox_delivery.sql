-- Webhook delivery state on the outbox (events subsystem). `status` is pending → delivered,
-- or dead after a non-retryable answer or exhausted retries (replay puts it back to pending),
-- or skipped (an event type that is switched off, e.g. device.heartbeat).
ALTER TABLE outbox ADD COLUMN dead_at_ms BIGINT;
ALTER TABLE outbox ADD COLUMN last_status BIGINT;
-- HTTP round trip of the successful attempt.
ALTER TABLE outbox ADD COLUMN latency_ms BIGINT;

-- Per-order (and per-device for order-less events) ordering: the dispatcher looks for an
-- earlier undelivered event of the same order; these partial indexes keep that lookup small.
CREATE INDEX outbox_open_by_order ON outbox (order_no, id) WHERE status IN ('pending', 'dead');
CREATE INDEX outbox_open_by_device ON outbox (device_id, id)
    WHERE status IN ('pending', 'dead') AND order_no IS NULL;

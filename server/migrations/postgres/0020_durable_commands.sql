-- The gateway core (issue #11): commands belong to the device and survive takeover, reconnect
-- and restart; settlements say where their duration came from; reports that matched nothing
-- are kept.
--
-- cmd_logs.status is now queued → sent → acked | refused | expired | superseded:
--   sent        written to the device at least once (attempts, last_sent_at_ms, conn_id);
--               its outcome is unknown until the device answers, so a later connection
--               verifies it (AP3000 resends with the same order number, BKV asks the port)
--   acked       the device answered and did it
--   refused     the device answered and did not
--   expired     its TTL passed before it was written, or it can no longer be delivered
--   superseded  no longer wanted (its order was cancelled or settled first)
ALTER TABLE cmd_logs ADD COLUMN port_no BIGINT;
ALTER TABLE cmd_logs ADD COLUMN last_sent_at_ms BIGINT;
ALTER TABLE cmd_logs ADD COLUMN conn_id BIGINT;
UPDATE cmd_logs SET status = CASE
    WHEN status = 'replied' AND result IN ('ok', 'done') THEN 'acked'
    WHEN status = 'replied' THEN 'refused'
    WHEN status = 'unanswered' THEN 'sent'
    ELSE status END;
UPDATE cmd_logs SET last_sent_at_ms = sent_at_ms WHERE sent_at_ms IS NOT NULL;
CREATE INDEX cmd_logs_open_by_device ON cmd_logs (device_id, id) WHERE status IN ('queued', 'sent');
CREATE INDEX cmd_logs_by_order ON cmd_logs (order_no, id);

-- Where the billed duration came from: gateway | device_clock | device_counter | last_report.
ALTER TABLE orders ADD COLUMN duration_source TEXT;
-- Completed by a device report after the gateway had cancelled or failed it (billed, flagged).
ALTER TABLE orders ADD COLUMN late_settlement BIGINT NOT NULL DEFAULT 0;
-- Who asked the order to stop before the device ended it: 1 API, 2 gateway (target or money
-- reached), 3 gateway (a charge with no open order).
ALTER TABLE orders ADD COLUMN stop_cause BIGINT;
CREATE INDEX orders_by_device_ref ON orders (device_id, device_ref);
CREATE INDEX orders_by_port ON orders (device_id, port_no, id);

-- Every end report: what became of it (settled, duplicate, late, after_gateway, unmatched) and
-- the device's handle of the charge it named.
ALTER TABLE end_reports ADD COLUMN outcome TEXT;
ALTER TABLE end_reports ADD COLUMN device_ref TEXT;

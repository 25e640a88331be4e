-- Issue #13: webhook delivery that rides out outages, and retention.
--
-- Each event carries a sequence number, per order (or per device for order-less events), so a
-- receiver sees a gap when an earlier event was dead-lettered. The counters live on the order
-- and device rows (they survive the pruning of delivered outbox rows).
ALTER TABLE outbox ADD COLUMN sequence BIGINT;
ALTER TABLE orders ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;

-- A dead event no longer holds the later events of its order: the ordering lookup only asks
-- for an earlier *pending* event.
DROP INDEX IF EXISTS outbox_open_by_order;
DROP INDEX IF EXISTS outbox_open_by_device;
CREATE INDEX outbox_pending_by_order ON outbox (order_no, id) WHERE status = 'pending';
CREATE INDEX outbox_pending_by_device ON outbox (device_id, id)
    WHERE status = 'pending' AND order_no IS NULL;
-- The report-candidates lookup (every device report) reads the port's newest orders through
-- orders_by_port and the device reference through orders_by_device_ref (0020), no longer
-- every order the device ever had.

-- Delivery figures for /api/v1/admin/stats as counters (delivered rows are pruned, and
-- counting the whole outbox on every stats call does not scale).
CREATE TABLE webhook_counters (
    id          BIGINT PRIMARY KEY,
    delivered   BIGINT NOT NULL DEFAULT 0,
    attempts    BIGINT NOT NULL DEFAULT 0
);
INSERT INTO webhook_counters (id, delivered, attempts)
    SELECT 1,
        (SELECT COUNT(*) FROM outbox WHERE status = 'delivered'),
        (SELECT CAST(COALESCE(SUM(attempts), 0) AS BIGINT) FROM outbox);

-- The gateway's schema. Timestamps are Unix milliseconds (`_ms`) or seconds, money is fen,
-- energy is Wh, power is 0.1 W (`_dw`). Flags are BIGINT 0/1 so both databases read alike.

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    protocol      TEXT NOT NULL,
    online        BIGINT NOT NULL DEFAULT 0,
    last_seen_at  BIGINT,
    connected_at  BIGINT,
    remote_addr   TEXT,
    firmware      TEXT,
    iccid         TEXT,
    signal        BIGINT,
    port_count    BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX devices_online ON devices (online, device_id);

CREATE TABLE ports (
    device_id        TEXT NOT NULL,
    port_no          BIGINT NOT NULL,
    socket_no        BIGINT,
    hole             BIGINT,
    status           TEXT NOT NULL,
    power_dw         BIGINT NOT NULL DEFAULT 0,
    reported_status  TEXT,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (device_id, port_no)
);

CREATE TABLE orders (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no             TEXT NOT NULL UNIQUE,
    device_id            TEXT NOT NULL,
    port_no              BIGINT NOT NULL,
    status               TEXT NOT NULL,
    charge_mode          BIGINT NOT NULL,
    target_duration      BIGINT NOT NULL DEFAULT 0,
    target_energy_wh     BIGINT NOT NULL DEFAULT 0,
    amount               BIGINT NOT NULL DEFAULT 0,
    price_per_kwh        BIGINT NOT NULL DEFAULT 0,
    service_fee          BIGINT NOT NULL DEFAULT 0,
    device_ref           TEXT,
    created_at_ms        BIGINT NOT NULL,
    expires_at_ms        BIGINT,
    started_at_ms        BIGINT,
    ended_at_ms          BIGINT,
    last_report_at_ms    BIGINT,
    duration_sec         BIGINT NOT NULL DEFAULT 0,
    energy_wh            BIGINT NOT NULL DEFAULT 0,
    current_power_dw     BIGINT NOT NULL DEFAULT 0,
    peak_power_dw        BIGINT NOT NULL DEFAULT 0,
    energy_fee           BIGINT NOT NULL DEFAULT 0,
    service_fee_amount   BIGINT NOT NULL DEFAULT 0,
    final_amount         BIGINT NOT NULL DEFAULT 0,
    end_reason           BIGINT,
    device_duration_sec  BIGINT,
    offline_replayed     BIGINT NOT NULL DEFAULT 0,
    was_offline          BIGINT NOT NULL DEFAULT 0,
    stop_requested       BIGINT NOT NULL DEFAULT 0,
    updated_at_ms        BIGINT NOT NULL
);
-- One active order per port, in the schema and not only in code.
CREATE UNIQUE INDEX orders_one_active_per_port ON orders (device_id, port_no)
    WHERE status IN ('pending', 'charging');
CREATE INDEX orders_by_device ON orders (device_id, id);
CREATE INDEX orders_by_status ON orders (status, id);

CREATE TABLE order_progress (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no      TEXT NOT NULL,
    at_ms         BIGINT NOT NULL,
    duration_sec  BIGINT NOT NULL,
    energy_wh     BIGINT NOT NULL,
    power_dw      BIGINT NOT NULL,
    status        TEXT NOT NULL
);
CREATE INDEX order_progress_by_order ON order_progress (order_no, at_ms);

-- One settlement per order: the primary key makes a second one impossible.
CREATE TABLE settlements (
    order_no             TEXT PRIMARY KEY,
    settled_at_ms        BIGINT NOT NULL,
    source               TEXT NOT NULL,
    duration_sec         BIGINT NOT NULL,
    device_duration_sec  BIGINT,
    energy_wh            BIGINT NOT NULL,
    energy_fee           BIGINT NOT NULL,
    service_fee_amount   BIGINT NOT NULL,
    final_amount         BIGINT NOT NULL,
    end_reason           BIGINT NOT NULL
);

-- Every end report that arrived, applied or not (duplicates and late ones stay visible).
CREATE TABLE end_reports (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no        TEXT,
    device_id       TEXT NOT NULL,
    port_no         BIGINT NOT NULL,
    received_at_ms  BIGINT NOT NULL,
    applied         BIGINT NOT NULL,
    detail          TEXT NOT NULL
);
CREATE INDEX end_reports_by_order ON end_reports (order_no);

-- Downlink commands: queued (device offline) → sent → replied / expired / failed.
CREATE TABLE cmd_logs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id       TEXT NOT NULL,
    order_no        TEXT,
    command         TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    seq             BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    request_hex     TEXT,
    reply_hex       TEXT,
    result          TEXT,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT,
    sent_at_ms      BIGINT,
    replied_at_ms   BIGINT,
    latency_ms      BIGINT
);
CREATE INDEX cmd_logs_by_device_status ON cmd_logs (device_id, status);
CREATE INDEX cmd_logs_by_status ON cmd_logs (status);

-- Transactional outbox: written in the same transaction as the state change it describes.
CREATE TABLE outbox (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id            TEXT NOT NULL UNIQUE,
    event_type          TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    order_no            TEXT,
    payload             TEXT NOT NULL,
    created_at_ms       BIGINT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'pending',
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL DEFAULT 0,
    delivered_at_ms     BIGINT,
    last_error          TEXT
);
CREATE INDEX outbox_by_status ON outbox (status, id);

-- API keys, SHA-256 hex of the key; the key itself is never stored.
CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

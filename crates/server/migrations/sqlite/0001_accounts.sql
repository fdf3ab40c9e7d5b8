-- Keys, their credits, reservations in flight, per-minute rate windows and usage history.
-- Times are Unix seconds; credits are integer millicredits (1 credit = 1000), so sums are exact.
-- AUTOINCREMENT: an id is never reused, so a released reservation's id cannot charge a newer one.

CREATE TABLE keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL CHECK (plan IN ('basic', 'plus')),
    sandbox INTEGER NOT NULL CHECK (sandbox IN (0, 1)),
    admin INTEGER NOT NULL CHECK (admin IN (0, 1)),
    -- NULL: the server's --credits.
    monthly_millicredits INTEGER CHECK (monthly_millicredits >= 0),
    -- NULL: the server's --rate-limit.
    rate_limit INTEGER CHECK (rate_limit >= 0),
    payg_millicredits INTEGER NOT NULL DEFAULT 0 CHECK (payg_millicredits >= 0),
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER
);
-- A revoked key keeps its row (and history); its name may be given to a new key.
CREATE UNIQUE INDEX keys_live_name ON keys (name) WHERE revoked_at IS NULL;

-- Subscription credits spent per calendar month (UTC, 'YYYY-MM').
CREATE TABLE month_usage (
    key_id INTEGER NOT NULL REFERENCES keys (id),
    month TEXT NOT NULL,
    used_millicredits INTEGER NOT NULL CHECK (used_millicredits >= 0),
    PRIMARY KEY (key_id, month)
);

-- Credits held by requests still rendering, with the replica that holds them and until when.
CREATE TABLE reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id INTEGER NOT NULL REFERENCES keys (id),
    replica TEXT NOT NULL,
    month TEXT NOT NULL,
    subscription_millicredits INTEGER NOT NULL CHECK (subscription_millicredits >= 0),
    payg_millicredits INTEGER NOT NULL CHECK (payg_millicredits >= 0),
    expires_at INTEGER NOT NULL
);
CREATE INDEX reservations_key_expiry ON reservations (key_id, expires_at);
CREATE INDEX reservations_replica ON reservations (replica);
CREATE INDEX reservations_expiry ON reservations (expires_at);

-- Credits that live reservations hold, per key: kept by the triggers below whatever removes a
-- reservation (commit, release, expiry), so a reservation reads one row, not a sum. Holds of
-- every month count against the current one (a request that straddles the month's end holds
-- its credit a moment longer, never less).
CREATE TABLE holds (
    key_id INTEGER PRIMARY KEY REFERENCES keys (id),
    subscription_millicredits INTEGER NOT NULL CHECK (subscription_millicredits >= 0),
    payg_millicredits INTEGER NOT NULL CHECK (payg_millicredits >= 0)
);

CREATE TRIGGER reservations_hold AFTER INSERT ON reservations BEGIN
    INSERT INTO holds (key_id, subscription_millicredits, payg_millicredits)
    VALUES (NEW.key_id, NEW.subscription_millicredits, NEW.payg_millicredits)
    ON CONFLICT (key_id) DO UPDATE SET
        subscription_millicredits = holds.subscription_millicredits + excluded.subscription_millicredits,
        payg_millicredits = holds.payg_millicredits + excluded.payg_millicredits;
END;

CREATE TRIGGER reservations_unhold AFTER DELETE ON reservations BEGIN
    UPDATE holds SET
        subscription_millicredits = subscription_millicredits - OLD.subscription_millicredits,
        payg_millicredits = payg_millicredits - OLD.payg_millicredits
    WHERE key_id = OLD.key_id;
END;

-- Units of the rate limit taken per key and clock minute (Unix seconds / 60).
CREATE TABLE rate_windows (
    key_id INTEGER NOT NULL REFERENCES keys (id),
    minute INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (key_id, minute)
);

-- One row per processed request; never the image.
CREATE TABLE usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id INTEGER NOT NULL REFERENCES keys (id),
    at INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    megapixels REAL NOT NULL,
    millicredits INTEGER NOT NULL,
    status INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX usage_key_time ON usage (key_id, at);

-- Keys, their credits, reservations in flight, per-minute rate windows and usage history.
-- Times are Unix seconds; credits are integer millicredits (1 credit = 1000), so sums are exact.

CREATE TABLE keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL CHECK (plan IN ('basic', 'plus')),
    sandbox BOOLEAN NOT NULL,
    admin BOOLEAN NOT NULL,
    -- NULL: the server's --credits.
    monthly_millicredits BIGINT CHECK (monthly_millicredits >= 0),
    -- NULL: the server's --rate-limit.
    rate_limit BIGINT CHECK (rate_limit >= 0),
    payg_millicredits BIGINT NOT NULL DEFAULT 0 CHECK (payg_millicredits >= 0),
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
-- A revoked key keeps its row (and history); its name may be given to a new key.
CREATE UNIQUE INDEX keys_live_name ON keys (name) WHERE revoked_at IS NULL;

-- Subscription credits spent per calendar month (UTC, 'YYYY-MM').
CREATE TABLE month_usage (
    key_id BIGINT NOT NULL REFERENCES keys (id),
    month TEXT NOT NULL,
    used_millicredits BIGINT NOT NULL CHECK (used_millicredits >= 0),
    PRIMARY KEY (key_id, month)
);

-- Credits held by requests still rendering, with the replica that holds them and until when.
CREATE TABLE reservations (
    id BIGSERIAL PRIMARY KEY,
    key_id BIGINT NOT NULL REFERENCES keys (id),
    replica TEXT NOT NULL,
    month TEXT NOT NULL,
    subscription_millicredits BIGINT NOT NULL CHECK (subscription_millicredits >= 0),
    payg_millicredits BIGINT NOT NULL CHECK (payg_millicredits >= 0),
    expires_at BIGINT NOT NULL
);
CREATE INDEX reservations_key_expiry ON reservations (key_id, expires_at);
CREATE INDEX reservations_replica ON reservations (replica);
CREATE INDEX reservations_expiry ON reservations (expires_at);

-- Credits that live reservations hold, per key: kept by the triggers below whatever removes a
-- reservation (commit, release, expiry), so a reservation reads one row, not a sum. Holds of
-- every month count against the current one (a request that straddles the month's end holds
-- its credit a moment longer, never less).
CREATE TABLE holds (
    key_id BIGINT PRIMARY KEY REFERENCES keys (id),
    subscription_millicredits BIGINT NOT NULL CHECK (subscription_millicredits >= 0),
    payg_millicredits BIGINT NOT NULL CHECK (payg_millicredits >= 0)
);

CREATE FUNCTION cutout_hold() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO holds (key_id, subscription_millicredits, payg_millicredits)
        VALUES (NEW.key_id, NEW.subscription_millicredits, NEW.payg_millicredits)
        ON CONFLICT (key_id) DO UPDATE SET
            subscription_millicredits = holds.subscription_millicredits + excluded.subscription_millicredits,
            payg_millicredits = holds.payg_millicredits + excluded.payg_millicredits;
        RETURN NEW;
    END IF;
    UPDATE holds SET
        subscription_millicredits = subscription_millicredits - OLD.subscription_millicredits,
        payg_millicredits = payg_millicredits - OLD.payg_millicredits
    WHERE key_id = OLD.key_id;
    RETURN OLD;
END
$$;

CREATE TRIGGER reservations_hold AFTER INSERT OR DELETE ON reservations
    FOR EACH ROW EXECUTE FUNCTION cutout_hold();

-- Units of the rate limit taken per key and clock minute (Unix seconds / 60).
CREATE TABLE rate_windows (
    key_id BIGINT NOT NULL REFERENCES keys (id),
    minute BIGINT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (key_id, minute)
);

-- One row per processed request; never the image.
CREATE TABLE usage (
    id BIGSERIAL PRIMARY KEY,
    key_id BIGINT NOT NULL REFERENCES keys (id),
    at BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    megapixels DOUBLE PRECISION NOT NULL,
    millicredits BIGINT NOT NULL,
    status BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX usage_key_time ON usage (key_id, at);

-- Holds p_credits of key p_key's balance for one request: its month's subscription first,
-- then pay-as-you-go. Returns the reservation's id, or NULL when the key cannot pay (or is
-- unknown). The key's row lock serialises reservations of one key; each statement after it
-- sees the others' committed holds. The key's own expired holds are released first.
CREATE FUNCTION cutout_reserve(
    p_key BIGINT, p_month TEXT, p_credits BIGINT, p_allowance BIGINT, p_now BIGINT,
    p_replica TEXT, p_expires BIGINT
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_payg BIGINT;
    v_used BIGINT;
    v_subscription_held BIGINT;
    v_payg_held BIGINT;
    v_subscription_left BIGINT;
    v_take BIGINT;
    v_id BIGINT;
BEGIN
    -- A hold lost in a crash of the database is lost with the request that made it (whose
    -- commit then finds nothing and charges nothing): it need not wait for the disk.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Locks are taken in one order everywhere: key, reservation, holds, month. NO KEY UPDATE
    -- leaves foreign-key checks (KEY SHARE) on the key free.
    SELECT payg_millicredits INTO v_payg FROM keys WHERE id = p_key FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Expired holds that a commit or the expirer is removing right now are theirs to finish.
    DELETE FROM reservations WHERE id IN (
        SELECT id FROM reservations WHERE key_id = p_key AND expires_at < p_now
        FOR UPDATE SKIP LOCKED);
    SELECT COALESCE((SELECT used_millicredits FROM month_usage
                     WHERE key_id = p_key AND month = p_month), 0),
           COALESCE((SELECT subscription_millicredits FROM holds WHERE key_id = p_key), 0),
           COALESCE((SELECT payg_millicredits FROM holds WHERE key_id = p_key), 0)
      INTO v_used, v_subscription_held, v_payg_held;
    v_subscription_left := GREATEST(0, p_allowance - v_used - v_subscription_held);
    IF v_subscription_left + GREATEST(0, v_payg - v_payg_held) < p_credits THEN
        RETURN NULL;
    END IF;
    v_take := LEAST(p_credits, v_subscription_left);
    INSERT INTO reservations
        (key_id, replica, month, subscription_millicredits, payg_millicredits, expires_at)
    VALUES (p_key, p_replica, p_month, v_take, p_credits - v_take, p_expires)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Charges reservation p_reservation and records its request; false (nothing charged) when
-- the reservation no longer exists. The key's row is written only when pay-as-you-go credits
-- are spent or its last use is over a minute old.
CREATE FUNCTION cutout_commit(
    p_reservation BIGINT, p_at BIGINT, p_endpoint TEXT, p_megapixels DOUBLE PRECISION,
    p_millicredits BIGINT, p_status BIGINT, p_duration_ms BIGINT
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    v_key BIGINT;
    v_month TEXT;
    v_subscription BIGINT;
    v_payg BIGINT;
BEGIN
    -- The key first, as cutout_reserve locks it.
    PERFORM 1 FROM keys WHERE id = (SELECT key_id FROM reservations WHERE id = p_reservation)
        FOR NO KEY UPDATE;
    DELETE FROM reservations WHERE id = p_reservation
    RETURNING key_id, month, subscription_millicredits, payg_millicredits
    INTO v_key, v_month, v_subscription, v_payg;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    INSERT INTO month_usage (key_id, month, used_millicredits)
    VALUES (v_key, v_month, v_subscription)
    ON CONFLICT (key_id, month) DO UPDATE
    SET used_millicredits = month_usage.used_millicredits + excluded.used_millicredits;
    UPDATE keys SET payg_millicredits = payg_millicredits - v_payg, last_used_at = p_at
    WHERE id = v_key
      AND (v_payg > 0 OR last_used_at IS NULL OR last_used_at < p_at - 60);
    INSERT INTO usage (key_id, at, endpoint, megapixels, millicredits, status, duration_ms)
    VALUES (v_key, p_at, p_endpoint, p_megapixels, p_millicredits, p_status, p_duration_ms);
    RETURN TRUE;
END
$$;

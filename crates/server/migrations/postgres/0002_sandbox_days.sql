-- Sandbox keys' calls per UTC day (PhotoRoom's sandbox: 100 a day): cutout_reserve also
-- refuses when the key's requests answered with an image since p_day_start, plus its holds,
-- reach p_daily_calls (NULL: no cap). Otherwise as in 0001.
DROP FUNCTION cutout_reserve(BIGINT, TEXT, BIGINT, BIGINT, BIGINT, TEXT, BIGINT);

CREATE FUNCTION cutout_reserve(
    p_key BIGINT, p_month TEXT, p_credits BIGINT, p_allowance BIGINT, p_now BIGINT,
    p_replica TEXT, p_expires BIGINT, p_daily_calls BIGINT, p_day_start BIGINT
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
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT payg_millicredits INTO v_payg FROM keys WHERE id = p_key FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM reservations WHERE id IN (
        SELECT id FROM reservations WHERE key_id = p_key AND expires_at < p_now
        FOR UPDATE SKIP LOCKED);
    -- A commit moves a hold into the usage history in one transaction, under the key's lock:
    -- the sum of the two is the same before and after it.
    IF p_daily_calls IS NOT NULL AND p_daily_calls <=
        (SELECT COUNT(*) FROM usage
         WHERE key_id = p_key AND at >= p_day_start AND status = 200)
        + (SELECT COUNT(*) FROM reservations WHERE key_id = p_key) THEN
        RETURN NULL;
    END IF;
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

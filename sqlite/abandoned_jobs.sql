-- Jobs whose client never came back: the last session's grace window expired
-- and no connect followed. `outcome` is how the job ended, if it has.
WITH last_expiry AS (
    SELECT job_id, max(seq) AS seq, max(at) AS expired_at
    FROM events
    WHERE kind = 'grace_expired'
    GROUP BY job_id
)
SELECT l.job_id,
       l.expired_at,
       (SELECT t.kind FROM events t
        WHERE t.job_id = l.job_id AND t.kind IN ('completed', 'failed', 'cancelled')) AS outcome
FROM last_expiry l
WHERE NOT EXISTS (SELECT 1 FROM events c
                  WHERE c.job_id = l.job_id AND c.seq > l.seq
                    AND c.kind IN ('connected', 'reconnected'))
ORDER BY l.expired_at DESC, l.job_id;

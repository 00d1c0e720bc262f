-- Reconnects per job, most first: which jobs' clients had to come back most.
SELECT job_id,
       count(*) FILTER (WHERE kind = 'reconnected')                                     AS reconnects,
       count(*) FILTER (WHERE kind = 'reconnected' AND json_extract(payload, '$.resumed')) AS resumed,
       count(*) FILTER (WHERE kind = 'disconnected')                                    AS disconnects
FROM events
WHERE kind IN ('reconnected', 'disconnected')
GROUP BY job_id
ORDER BY reconnects DESC, job_id
LIMIT 50;

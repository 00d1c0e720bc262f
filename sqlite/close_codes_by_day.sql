-- Socket closes per day, by close code and reason (from `disconnected`).
SELECT substr(at, 1, 10)                   AS day,
       json_extract(payload, '$.code')     AS code,
       json_extract(payload, '$.reason')   AS reason,
       count(*)                            AS closes
FROM events
WHERE kind = 'disconnected'
GROUP BY day, code, reason
ORDER BY day, closes DESC, code;

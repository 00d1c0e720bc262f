-- How long clients stayed away before reconnecting (from `reconnected.gapMs`).
SELECT CASE
         WHEN gap < 1000  THEN '1: under 1 s'
         WHEN gap < 5000  THEN '2: 1-5 s'
         WHEN gap < 30000 THEN '3: 5-30 s'
         WHEN gap < 60000 THEN '4: 30-60 s'
         ELSE                  '5: 60 s or more'
       END      AS gap,
       count(*) AS reconnects
FROM (SELECT json_extract(payload, '$.gapMs') AS gap
      FROM events
      WHERE kind = 'reconnected' AND json_extract(payload, '$.gapMs') IS NOT NULL)
GROUP BY 1
ORDER BY 1;

-- joblife operator views. Installed by migration 0001.

-- How many jobs of each type are in each status.
CREATE OR REPLACE VIEW job_status_summary AS
SELECT j.job_type,
       s.id AS status_id,
       s.name AS status,
       count(*) AS jobs,
       min(j.status_changed_at) AS oldest_status_change,
       max(j.status_changed_at) AS newest_status_change
  FROM jobs j
  JOIN job_statuses s ON s.id = j.status
 GROUP BY j.job_type, s.id, s.name;

-- One line per job: what it is, where it stands, for how long, and which attempt.
CREATE OR REPLACE VIEW jobs_overview AS
SELECT j.id,
       j.job_type,
       j.name,
       j.input_product_id,
       j.tile_id,
       j.reprocessing_context,
       s.name AS status,
       j.status_changed_at,
       now() - j.status_changed_at AS time_in_status,
       j.attempt,
       j.max_attempts,
       CASE j.priority WHEN 1 THEN 'nrt' WHEN 2 THEN 'delayed' WHEN 3 THEN 'reprocessing' END
           AS priority,
       j.worker_flavor,
       j.nomad_job_id,
       j.exit_code,
       j.heartbeat_at,
       j.input_publication_date,
       j.output_publication_date,
       j.created_at,
       j.unique_id
  FROM jobs j
  JOIN job_statuses s ON s.id = j.status;

-- Timeliness: from the input product's publication to the output product's publication
-- (NULL while the output is not published yet).
CREATE OR REPLACE VIEW job_timeliness AS
SELECT j.id,
       j.job_type,
       j.input_product_id,
       j.tile_id,
       CASE j.priority WHEN 1 THEN 'nrt' WHEN 2 THEN 'delayed' WHEN 3 THEN 'reprocessing' END
           AS priority,
       s.name AS status,
       j.input_publication_date,
       j.output_publication_date,
       j.output_publication_date - j.input_publication_date AS timeliness,
       extract(epoch FROM j.output_publication_date - j.input_publication_date)
           AS timeliness_seconds
  FROM jobs j
  JOIN job_statuses s ON s.id = j.status
 WHERE j.input_publication_date IS NOT NULL;

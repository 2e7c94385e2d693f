-- The full input of a job whose input carries inline data (data: URIs over 128 bytes). The job
-- row holds the input as it is shown, with that data elided, so that reading and listing jobs
-- never reads megabytes; the worker that runs the job reads the full input from here.
CREATE TABLE job_inputs (
    job_id TEXT PRIMARY KEY REFERENCES jobs (id),
    input  TEXT NOT NULL
);

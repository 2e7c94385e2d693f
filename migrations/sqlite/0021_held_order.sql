-- On Postgres, `jobs_held` keeps its ids in byte order (`COLLATE "C"`) so that no other index can
-- serve a walk of a lane's held jobs (see the Postgres migration). SQLite compares text by its
-- bytes already (BINARY) and plans each statement in-process from its own index choice: nothing
-- changes here. The file keeps both engines' migrations numbered alike.
SELECT 1;

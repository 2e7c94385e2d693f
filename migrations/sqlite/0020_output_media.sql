-- Output metadata (issue 19): what an output is, read from the file by the worker (width and
-- height; a video's duration and frame rate) and whether a preview image is stored beside it
-- (at `{object_key}.preview.jpg`). One JSON column: the fields are read and written together,
-- never queried on, and an older row's NULL reads as "nothing known".
ALTER TABLE outputs ADD COLUMN media TEXT;

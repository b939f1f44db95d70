"""Batch completion reports: per object one row in gzipped CSV parts in S3, with a
`manifest.json` in the shape S3 Batch Operations completion reports have.

- `rows`: the layout (pure): the columns, a row from a ledger record, a part's CSV, the manifest;
- `parts`: one gzipped part streamed to S3 as it grows (memory: one upload part);
- `writer`: `write_report` walks a batch's done list in pages and writes the report;
- `retention`: after a full report, the batch's records expire (`expire_reported.lua`);
- `batch`: `batch_end`, when a batch ended (every job it counts is final);
- `job`: the arq job (`report`), queued once per batch end.

Nothing heavy is imported here: `rows` is read by what must stay light.
"""

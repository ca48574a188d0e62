-- BulkOps keeps its own database next to VpnUsers' (POSTGRES_DB), so the two
-- services' migration tables never meet. Run once, on an empty data volume.
CREATE DATABASE bulkops OWNER mesh;

"""One partition per campaign; the partition key is the campaign id (SPEC section 5)."""

import dagster as dg

campaigns_partitions = dg.DynamicPartitionsDefinition(name="campaigns")

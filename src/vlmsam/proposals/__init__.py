"""SAM proposals at dataset scale: computed once (:mod:`.generate`), stored in shards (:mod:`.store`)."""

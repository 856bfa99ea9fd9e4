"""The use cases every door shares (identities, training, generation, workflows); each rule lives here once."""

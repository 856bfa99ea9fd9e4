"""Photo decoding and preparation: uploads in, a training dataset and a report out."""

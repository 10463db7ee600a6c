"""The small shared core that pipeline/, students/, teachers/ and compress/ build on: errors,
atomic artifact writes, precision and device decisions. It imports none of them."""

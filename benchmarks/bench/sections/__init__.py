"""One module per section of `make bench`; each exports `section(r: Run)`."""

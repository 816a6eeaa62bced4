//! Parsers for `nvidia-smi mig -lgip`, `-lgipp` and `-lcip` output, and the importer that turns
//! them into a catalog entry.

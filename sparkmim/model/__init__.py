"""The SparK model: masking, sparse encoding, densify, light UNet decoder, masked-patch loss."""

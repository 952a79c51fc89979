// The package version, written into every image (the format has its own version).
export const CREST_VERSION = '0.1.0';

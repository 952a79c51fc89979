// crest's programmatic API. The CLI is one user of it.
export { CrestError, SyscallError } from './sys/errors.js';

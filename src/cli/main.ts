#!/usr/bin/env node
// The crest command: a thin shell over the API in ../index.ts.
import { main } from './commands.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});

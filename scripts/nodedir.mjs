// Prints node-gyp's --nodedir for the Node.js running this: the headers
// installed beside it (NodeSource and Debian packages, the official
// tarballs, nvm all put them in PREFIX/include/node), so that building the
// addon never downloads them. Prints nothing when npm_config_nodedir is set
// already, or when there are no headers there (node-gyp then looks as usual).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

const prefix = dirname(dirname(process.execPath));
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) {
  process.stdout.write(`--nodedir=${prefix}`);
}

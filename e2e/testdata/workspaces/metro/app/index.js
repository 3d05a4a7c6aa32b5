const {add} = require('./math');
const {greet} = require('./greet');

console.log(greet('kura') + ' ' + add(20, 22));

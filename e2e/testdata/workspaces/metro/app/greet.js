exports.greet = function greet(name) {
  return 'hello ' + name + ' from a bundle served by the Kura cache';
};

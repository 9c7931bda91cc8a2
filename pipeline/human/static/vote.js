// Keyboard shortcuts a / b / t press the vote buttons; a second submit of the same page is
// suppressed (the server would refuse it anyway: its nonce is spent).
(function () {
  var form = document.getElementById("vote-form");
  var sent = false;
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); }
    sent = true;
  });
  var keys = { a: "vote-A", b: "vote-B", t: "vote-tie" };
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return; }
    var target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.type === "text")) { return; }
    var id = keys[event.key.toLowerCase()];
    if (id) {
      event.preventDefault();
      form.requestSubmit(document.getElementById(id));
    }
  });
})();

"""The contracts every tandem package shares: settings, ids, wire formats and their codecs,
topic names, lifecycle states, event types, devices, features. They import no other tandem
package."""
